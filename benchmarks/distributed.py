"""Distributed training on this machine: training steps per second with 1 and 2 processes (DDP,
gloo on CPU) and what the processes exchange per step.

    python -m benchmarks distributed    # benchmarks/results/distributed.json

Each configuration trains the same model on the same global batches (synthetic faces, N AUs,
D tokens of C channels, global batch B) for ``--warmup`` untimed and ``--steps`` timed steps,
in fresh processes (``torch.multiprocessing``). A step is what :func:`pyg_mefl.train.fit` does:
forward, the loss of the global batch, backward, AdamW. One process runs without
``torch.distributed``, as ``fit`` does; two processes run DDP with every batch norm synchronised.

Communication per step and process is counted where it happens: DDP's gradient all-reduce by a
communication hook (the bytes of each gradient bucket), the collectives of the synchronised norms
and of the global-batch loss by wrapping ``torch.distributed.all_reduce`` (bytes and calls by the
calling module). Steps per second are global steps (B faces each). The machine's load average is
recorded: timings on a shared machine are noisy, so compare configurations of one run only.
Each configuration sets its processes' threads (``CONFIGURATIONS``): ``--threads`` does not
apply here.
"""
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch_geometric.loader import DataLoader

from pyg_mefl import MEFL, SyntheticFaceDataset
from pyg_mefl.models import FaceAUModel
from pyg_mefl.train.distributed import distribute_model, global_batch_loss, shard_loader
from pyg_mefl.train.loop import model_targets
from pyg_mefl.train.losses import MEFLLoss, au_class_weights

__all__ = ["add_arguments", "run"]

OPTIONS = ("num_aus", "tokens", "channels", "batch_size", "steps", "warmup")
CONFIGURATIONS = ((1, 1), (2, 1), (1, 2))  # (processes, threads of each)


def add_arguments(parser) -> None:
    parser.add_argument("--num-aus", type=int, default=27)
    parser.add_argument("--tokens", type=int, default=9)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch B")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)


class Traffic:
    """Bytes and calls of the collectives of one process, by origin."""

    def __init__(self):
        self.bytes, self.calls = defaultdict(int), defaultdict(int)

    def add(self, origin, tensor):
        self.bytes[origin] += tensor.numel() * tensor.element_size()
        self.calls[origin] += 1

    def reset(self):
        self.bytes.clear()
        self.calls.clear()


ORIGINS = {"pyg_mefl.nn.sync_norm": "norm statistics", "pyg_mefl.train.distributed": "loss counts"}
# DDP's communication hook all-reduces through the Python API too: its buckets are counted by
# the hook itself
HOOKS = "torch.distributed.algorithms.ddp_comm_hooks.default_hooks"


def _count_all_reduce(traffic):
    all_reduce = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller != HOOKS:
            traffic.add(ORIGINS.get(caller, caller), tensor)
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting


def _count_gradients(traffic):
    def hook(state, bucket):
        traffic.add("gradients (DDP)", bucket.buffer())
        return default_hooks.allreduce_hook(None, bucket)
    return hook


def _worker(rank, world, threads, args, rendezvous, results):
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                world_size=world)
    torch.manual_seed(0)
    steps = args.warmup + args.steps
    dataset = SyntheticFaceDataset(args.batch_size * steps, num_aus=args.num_aus,
                                   num_tokens=args.tokens, channels=args.channels,
                                   num_directions=-(-args.num_aus // args.tokens), seed=0)
    model = FaceAUModel(MEFL(args.channels, args.num_aus, num_sub_aus=0, edge_head=True,
                             au_names=dataset.au_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = MEFLLoss(au_class_weights(dataset.labels), lam=0.05)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    traffic = Traffic()
    network = model
    if world > 1:
        loader = shard_loader(loader, training=True)
        network = distribute_model(model, torch.device("cpu"))
        network.register_comm_hook(None, _count_gradients(traffic))
        _count_all_reduce(traffic)
    model.train()
    began = None
    for step, batch in enumerate(loader):
        if step == args.warmup:
            if world > 1:
                dist.barrier()
            traffic.reset()
            began = time.perf_counter()
        out = network(batch)
        loss = global_batch_loss(loss_fn, out.probs, model_targets(model, batch),
                                 out.edge_logits, batch.edge_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - began
    if rank == 0:
        results.update({
            "processes": world, "threads_per_process": threads,
            "steps_per_second": args.steps / seconds,
            "faces_per_second": args.steps * args.batch_size / seconds,
            "bytes_all_reduced_per_step": {k: v / args.steps for k, v in traffic.bytes.items()},
            "collectives_per_step": {k: v / args.steps for k, v in traffic.calls.items()},
            "parameters": sum(p.numel() for p in model.parameters()),
        })
    if world > 1:
        dist.destroy_process_group()


def run_processes(world, threads, args):
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, (world, threads, args, os.path.join(folder, "rendezvous"), results),
                 nprocs=world)
        return dict(results)


def run(args, log) -> dict:
    rows = []
    for world, threads in CONFIGURATIONS:
        load = os.getloadavg()[0]
        row = run_processes(world, threads, args)
        row["load_average_before"] = load
        rows.append(row)
        total = sum(row["bytes_all_reduced_per_step"].values())
        log(f"{world} process(es) x {threads} thread(s): {row['steps_per_second']:.2f} steps/s "
            f"({row['faces_per_second']:.0f} faces/s), {total / 1e6:.3f} MB all-reduced per "
            f"step and process {dict(row['bytes_all_reduced_per_step'])}, collectives per step "
            f"{dict(row['collectives_per_step'])}  (load before: {load:.1f})")
    return {"config": {option: getattr(args, option) for option in OPTIONS}, "results": rows}
