"""Training survives being killed, repeats itself exactly, and refuses bad checkpoints clearly."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyg_mefl.train import load_training_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_au.py"
# Small enough to be quick, big enough that an epoch lasts a few seconds to be killed in.
CONFIG = ["--num-faces", "160", "--batch-size", "8", "--seed", "3"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _start(args, script=None):
    command = [sys.executable, str(script or EXAMPLE)] + args
    return subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def _without_timing(metrics):
    metrics.pop("seconds")
    for epoch in metrics["history"]:
        epoch.pop("seconds")
    return metrics


def _final_weights(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _train(args):
    """One run of the example in its own process, as a user starts it."""
    result = _run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    _train(CONFIG + ["--epochs", "3", "--out", str(out)])
    return out


def test_same_seed_gives_identical_metrics(straight_run, tmp_path):
    _train(CONFIG + ["--epochs", "3", "--out", str(tmp_path)])
    first, second = (json.loads((out / "metrics.json").read_text())
                     for out in (straight_run, tmp_path))
    assert _without_timing(second) == _without_timing(first)
    _assert_same_weights(_final_weights(tmp_path), _final_weights(straight_run))


def test_sigkill_mid_epoch_then_resume_completes_exactly(straight_run, tmp_path):
    process = _start(CONFIG + ["--epochs", "3", "--out", str(tmp_path)])
    _wait_for(tmp_path / "checkpoint.pt", process)
    time.sleep(0.7)  # somewhere in the next epochs
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = load_training_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert 1 <= state["epoch"] <= 3
    _train(CONFIG + ["--epochs", "3", "--out", str(tmp_path),
                     "--resume", str(tmp_path / "checkpoint.pt")])
    _assert_same_weights(_final_weights(tmp_path), _final_weights(straight_run))
    # the default recipe resumes exactly too: learning-rate schedule, the token normalisation
    # chosen and fitted on the training faces, the thresholds calibrated on validation
    resumed, straight = (json.loads((out / "metrics.json").read_text())
                         for out in (tmp_path, straight_run))
    assert len(resumed["history"]) == 3 and resumed["thresholds"] is not None
    assert _without_timing(resumed) == _without_timing(straight)
    assert load_training_checkpoint(str(tmp_path / "checkpoint.pt"))["scheduler"] == \
        load_training_checkpoint(str(straight_run / "checkpoint.pt"))["scheduler"]


SLOW_SAVE = """
import io, pathlib, runpy, sys, time
import torch
marker = pathlib.Path(sys.argv.pop(1))
real_save = torch.save

def half_written_save(obj, target, *args, **kwargs):
    # the second epoch's checkpoint: write half of it, tell the test, and hang there
    if isinstance(target, str) and "checkpoint.pt" in target and pathlib.Path(
            target.split("checkpoint.pt")[0], "checkpoint.pt").exists():
        buffer = io.BytesIO()
        real_save(obj, buffer)
        with open(target, "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        marker.touch()
        time.sleep(600)
    return real_save(obj, target, *args, **kwargs)

torch.save = half_written_save
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigkill_while_writing_a_checkpoint_keeps_the_last_good_one(straight_run, tmp_path):
    script, marker = tmp_path / "slow_save.py", tmp_path / "writing"
    script.write_text(SLOW_SAVE)
    out = tmp_path / "run"
    process = _start([str(marker), str(EXAMPLE)] + CONFIG + ["--epochs", "3", "--out", str(out)],
                     script=script)
    _wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(out.glob("checkpoint.pt.*.tmp")), "the kill should hit a half-written file"
    state = load_training_checkpoint(str(out / "checkpoint.pt"))
    assert state["epoch"] == 1
    _train(CONFIG + ["--epochs", "3", "--out", str(out), "--resume", str(out / "checkpoint.pt")])
    _assert_same_weights(_final_weights(out), _final_weights(straight_run))


def _run_cli(args):
    return subprocess.run([sys.executable, str(EXAMPLE)] + args, env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("kind,message", [
    ("truncated", "not a readable checkpoint (truncated or corrupt?)"),
    ("foreign", "is not a training checkpoint of pyg_mefl.fit (missing ['optimizer'"),
    ("missing", "checkpoint file not found"),
])
def test_bad_resume_checkpoint_is_one_clear_line(straight_run, tmp_path, kind, message):
    path = tmp_path / "checkpoint.pt"
    if kind == "truncated":
        data = (straight_run / "checkpoint.pt").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "foreign":
        torch.save({"model": {"weight": torch.zeros(2)}}, path)
    result = _run_cli(CONFIG + ["--epochs", "1", "--out", str(tmp_path / "out"),
                                "--resume", str(path)])
    assert result.returncode == 2
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_into_a_different_model_is_named(straight_run, tmp_path):
    result = _run_cli(CONFIG + ["--lam", "0",  # no edge head: not the checkpoint's model
                                "--epochs", "1", "--out", str(tmp_path),
                                "--resume", str(straight_run / "checkpoint.pt")])
    assert result.returncode == 2
    assert "holds a different model or optimizer than this run" in result.stderr
    assert "Traceback" not in result.stderr
