"""Distributed training on CPU (gloo, 2 processes): the synchronised norms equal one process on
the concatenated batch, and 2-process training equals 1-process training with the same global
batches, resumed or not."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import BatchNorm1d, BatchNorm2d
from torch.nn.modules.batchnorm import _BatchNorm
from torch_geometric.loader import DataLoader

from pyg_mefl import MEFL, SlotBatchNorm, SmallCNN, SyntheticFaceDataset
from pyg_mefl.models import FaceAUModel
from pyg_mefl.nn.sync_norm import SyncedBatchNorm
from pyg_mefl.train import evaluate, fit
from pyg_mefl.train.distributed import ShardedBatchSampler, shard_loader, synchronise_norms
from pyg_mefl.train.losses import MEFLLoss, au_class_weights

WORLD = 2
ROOT = Path(__file__).resolve().parents[2]


def _spawn(function, path, *args):
    """Run ``function(rank, path, *args)`` in ``WORLD`` fresh processes joined by gloo."""
    mp.spawn(_join_and_run, (function, str(path), args), nprocs=WORLD)


def _join_and_run(rank, function, path, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank,
                            world_size=WORLD)
    try:
        function(rank, path, *args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- synchronised norms

def _norm_cases():
    """(name, norm, input, slot, rows of rank 0): the concatenated batch of both ranks, with
    uneven per-slot counts (a slot on one rank only, a slot on none) and a large mean offset."""
    generator = torch.Generator().manual_seed(5)
    cases = []
    edge_slots = SlotBatchNorm(5)  # one statistic per slot over tokens x channels
    slot = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 1, 4, 2])
    cases.append(("edge slots", edge_slots, 50 + 3 * torch.randn(11, 3, 4, generator=generator),
                  slot, 6))
    node_channels = SlotBatchNorm(4, num_channels=6)  # per (AU, channel), as the AFG norm
    slot = torch.tensor([3, 0, 1, 1, 0, 2, 2, 3, 0])
    cases.append(("AU channels", node_channels, torch.randn(9, 3, 6, generator=generator) - 2,
                  slot, 4))
    cases.append(("BatchNorm1d", BatchNorm1d(6), torch.randn(7, 6, 5, generator=generator) * 4,
                  None, 3))
    cases.append(("BatchNorm2d", BatchNorm2d(3), torch.randn(5, 3, 4, 4, generator=generator),
                  None, 2))
    for _, norm, _, _, _ in cases:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5, generator=generator)
            norm.bias.uniform_(-1, 1, generator=generator)
    return cases


def _norm_steps(norm, x, slot, weight):
    """Two training steps (output and gradients of the second) and an eval output."""
    results = {}
    for _ in range(2):
        x = x.detach().requires_grad_()
        norm.zero_grad()
        out = norm(x) if slot is None else norm(x, slot)
        (out * weight).sum().backward()
        results.update(out=out.detach(), x_grad=x.grad, weight_grad=norm.weight.grad.clone(),
                       bias_grad=norm.bias.grad.clone())
    norm.eval()
    results["eval_out"] = norm(x) if slot is None else norm(x, slot)
    results.update({name: buffer.clone() for name, buffer in norm.named_buffers()})
    return results


def _rows(rank, split, total):
    return slice(0, split) if rank == 0 else slice(split, total)


def _synced_norm_worker(rank, path):
    results, calls = {}, []
    all_reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    for name, norm, x, slot, split in _norm_cases():
        norm = synchronise_norms(norm)
        rows = _rows(rank, split, x.size(0))
        weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))[rows]
        calls.clear()
        results[name] = _norm_steps(norm, x[rows], None if slot is None else slot[rows], weight)
        results[name].update(type=type(norm).__name__, collectives=len(calls))
    try:  # processes that shuffle with their own seeds would overlap: refused
        shard_loader(DataLoader(list(range(8)), batch_size=4, shuffle=True), training=True)
    except ValueError as error:
        results["unseeded shuffle"] = str(error)
    torch.save(results, f"{path}/norms_{rank}.pt")


def test_synchronised_norms_equal_one_process_on_the_concatenated_batch(tmp_path):
    _spawn(_synced_norm_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"norms_{rank}.pt") for rank in range(WORLD)]
    assert "give the DataLoader a generator" in ranks[0]["unseeded shuffle"]
    for name, norm, x, slot, split in _norm_cases():
        weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        expected = _norm_steps(copy.deepcopy(norm), x, slot, weight)
        got = [r[name] for r in ranks]
        assert got[0]["type"] == ("SlotBatchNorm" if slot is not None else "SyncedBatchNorm")
        # one collective per training forward (all slots packed) and one in its backward, none
        # in evaluation: 2 training steps
        assert got[0]["collectives"] == 4, name
        for key in ("out", "x_grad", "eval_out"):
            torch.testing.assert_close(torch.cat([g[key] for g in got]), expected[key].detach(),
                                       msg=f"{name}: {key}")
        for key in ("weight_grad", "bias_grad"):  # each rank holds its part of the gradient
            torch.testing.assert_close(got[0][key] + got[1][key], expected[key],
                                       msg=f"{name}: {key}")
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            for rank in range(WORLD):
                torch.testing.assert_close(got[rank][key], expected[key],
                                           msg=f"{name}: {key} of rank {rank}")


def test_synchronise_norms_converts_every_batch_norm_in_place():
    model = FaceAUModel(MEFL(16, 5, num_sub_aus=0), SmallCNN(16, grid=2))
    before = model.state_dict()
    parameters = list(model.parameters())
    batch_norms = sum(isinstance(m, _BatchNorm) for m in model.modules())  # CNN, global block
    assert batch_norms >= 2
    group = object()  # stands for a process group; nothing is initialised, nothing syncs
    assert synchronise_norms(model, group) is model
    norms = [m for m in model.modules() if isinstance(m, (_BatchNorm, SlotBatchNorm))]
    assert sum(isinstance(m, SyncedBatchNorm) for m in norms) == batch_norms
    assert all(m.process_group is group for m in norms)
    assert all(isinstance(m, (SyncedBatchNorm, SlotBatchNorm)) for m in norms)
    assert list(model.parameters()) == parameters  # an optimizer built before keeps training
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], value) for key, value in before.items())


def test_norms_do_not_synchronise_without_a_process_group():
    # outside a distributed run the converted layers are plain batch norms
    norm = BatchNorm1d(4)
    synced = SyncedBatchNorm.from_batch_norm(copy.deepcopy(norm), None)
    x = torch.randn(6, 4, 3)
    torch.testing.assert_close(synced(x), norm(x))
    assert synced.weight is not norm.weight and synced.running_mean.shape == (4,)


# ---------------------------------------------------------------- sharded batches

def test_shards_partition_each_global_batch_in_order():
    order = list(range(23))
    batches = list(ShardedBatchSampler(order, 8))
    shards = [list(ShardedBatchSampler(order, 8, rank=r, world_size=3)) for r in range(3)]
    for step, batch in enumerate(batches):
        assert sum((s[step] for s in shards), []) == batch
        assert max(len(s[step]) for s in shards) - min(len(s[step]) for s in shards) <= 1


def test_a_global_batch_smaller_than_the_processes_is_refused():
    with pytest.raises(ValueError, match="batch_size.*3 processes"):
        ShardedBatchSampler(list(range(17)), 8, rank=0, world_size=3)  # last batch: 1 face
    evaluation = ShardedBatchSampler(list(range(17)), 8, rank=2, world_size=3, skip_empty=True)
    assert len(list(evaluation)) == len(evaluation) == 2


# ---------------------------------------------------------------- training

EPOCHS = 2


def _setup():
    """A small model and data (C = 16, 6 AUs) and SGD: Adam would turn the round-off-sized
    gradients of parameters the loss does not depend on (a bias before a batch norm, a key bias
    inside a softmax) into full steps, so that their values could not be compared."""
    torch.manual_seed(0)
    dataset = SyntheticFaceDataset(120, num_aus=6, num_tokens=4, channels=16, seed=2)
    train, val, test = (dataset.subset(split) for split in ("train", "val", "test"))
    model = FaceAUModel(MEFL(16, 6, num_sub_aus=0, edge_head=True, au_names=dataset.au_names))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = MEFLLoss(au_class_weights(train.face_labels()), lam=0.05)
    loaders = (DataLoader(train, batch_size=15, shuffle=True,
                          generator=torch.Generator().manual_seed(0)),
               DataLoader(val, batch_size=16), DataLoader(test, batch_size=16))
    return model, optimizer, loss_fn, loaders


def _train(out, epochs=EPOCHS, resume=None):
    model, optimizer, loss_fn, (train, val, test) = _setup()
    history = fit(model, optimizer, loss_fn, train, val, epochs, str(out), resume=resume,
                  log=lambda line: None)
    return history, evaluate(model, test, torch.device("cpu"))


def _training_worker(rank, path):
    _, test = _train(f"{path}/straight")
    if rank == 0:
        torch.save(test, f"{path}/test_metrics.pt")
    _train(f"{path}/resumed", epochs=1)
    _train(f"{path}/resumed", resume=f"{path}/resumed/checkpoint.pt")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp")
    _spawn(_training_worker, path)
    return path


def _weights(out):
    return torch.load(Path(out) / "checkpoint.pt", weights_only=True)["model"]


def _assert_relatively_close(got, expected, tolerance=1e-3):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if value.is_floating_point():
            error = (got[key] - value).abs().max() / value.abs().max().clamp(min=1e-12)
            assert error <= tolerance, f"{key}: relative difference {error:.2e}"
        else:
            assert torch.equal(got[key], value), key


def test_two_processes_equal_one_process_with_the_global_batch(two_processes, tmp_path):
    history, test = _train(tmp_path)
    # weights, batch-norm running statistics and counters included
    _assert_relatively_close(_weights(two_processes / "straight"), _weights(tmp_path))
    ddp_test = torch.load(two_processes / "test_metrics.pt")
    assert abs(ddp_test["mean_f1"] - test["mean_f1"]) <= 0.5
    ddp_history = torch.load(two_processes / "straight" / "checkpoint.pt",
                             weights_only=True)["history"]
    for ours, theirs in zip(history, ddp_history):
        assert abs(ours["train_loss"] - theirs["train_loss"]) <= 1e-4 * ours["train_loss"]
        assert abs(ours["val_mean_f1"] - theirs["val_mean_f1"]) <= 0.5


def test_two_process_resume_equals_two_epochs_straight(two_processes):
    straight, resumed = (two_processes / "straight", two_processes / "resumed")
    _assert_relatively_close(_weights(resumed), _weights(straight), tolerance=0.0)
    state = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert len(state["rng_ranks"]) == WORLD and state["epoch"] == EPOCHS


def test_a_two_process_checkpoint_resumes_in_one_process(two_processes, tmp_path):
    # the checkpoint holds the unwrapped model: one process continues the 2-process run
    _train(tmp_path, resume=str(two_processes / "resumed" / "checkpoint.pt"), epochs=EPOCHS + 1)
    _train(tmp_path / "straight", epochs=EPOCHS + 1)
    _assert_relatively_close(_weights(tmp_path), _weights(tmp_path / "straight"))


# ---------------------------------------------------------------- the example under torchrun

CLI = ["--num-faces", "160", "--batch-size", "16", "--epochs", "3", "--seed", "1"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _example(args, processes=None):
    """The training example as a user starts it: ``torchrun`` with ``processes``, or plain."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}"] if processes else [sys.executable]
    return subprocess.Popen(launcher + [str(ROOT / "examples" / "train_au.py")] + CLI + args,
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _finish(process, timeout=300):
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_clearly_and_resume_completes_it(tmp_path):
    out = tmp_path / "ddp"
    launcher = _example(["--out", str(out)], processes=WORLD)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists():
        assert launcher.poll() is None, launcher.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)
    time.sleep(0.5)  # inside a later epoch
    workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                             text=True).stdout.split()
    assert len(workers) == WORLD, workers
    os.kill(int(workers[-1]), signal.SIGKILL)
    code, stderr = _finish(launcher, timeout=120)  # the survivor does not hang
    assert code != 0 and "SIGKILL" in stderr and "rank" in stderr, stderr[-2000:]
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["epoch"]
    assert killed_at < 3

    code, stderr = _finish(_example(["--out", str(out), "--resume", str(out / "checkpoint.pt")],
                                    processes=WORLD))
    assert code == 0, stderr[-2000:]
    straight = tmp_path / "straight"
    code, stderr = _finish(_example(["--out", str(straight)], processes=WORLD))
    assert code == 0, stderr[-2000:]
    _assert_relatively_close(_weights(out), _weights(straight), tolerance=0.0)
    resumed, expected = (_without_seconds(json.loads((path / "metrics.json").read_text()))
                         for path in (out, straight))
    assert resumed == expected
    assert (resumed["world_size"], resumed["batch_size"]) == (WORLD, 16)


def _without_seconds(metrics):
    metrics.pop("seconds")
    for epoch in metrics["history"]:
        epoch.pop("seconds")
    return metrics
