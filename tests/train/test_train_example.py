"""examples/train_au.py end to end on tiny configurations, and exact resuming."""
import json
import math
import os

import pytest
import torch

from pyg_mefl import OPENGRAPHAU_MAIN_AUS
from image_lists import write_image_lists

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("checkpoint.pt", "best.pt", "metrics.json", "f1_per_au.png", "au_relations.png",
           "training_curves.png")


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A tiny token-features file: 40 faces, 4 tokens of 16 channels, 3 AUs, some unknown."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (40, 3), generator=generator)
    labels[::7, 1] = -1
    tokens = torch.randn(40, 4, 16, generator=generator) + labels[:, :1, None].float()
    path = tmp_path_factory.mktemp("features") / "faces.pt"
    torch.save({"tokens": tokens, "labels": labels, "au_names": ["AU1", "AU2", "AU4"]}, path)
    return str(path)


def _check_outputs(out, au_names, epochs):
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    for name in OUTPUTS:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # atomic writes left nothing
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["f1"]) == au_names
    for key in ("mean_f1", "mean_f1_at_0.5", "accuracy", "baseline_all_positive_f1",
                "baseline_ridge_probe_f1"):
        assert 0 <= metrics[key] <= 100, key
    assert list(metrics["thresholds"]) == au_names
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    assert all(math.isfinite(h["train_loss"]) for h in metrics["history"])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == epochs
    assert set(checkpoint["rng"]) == {"torch", "numpy", "python", "loader"}
    assert set(checkpoint) >= {"model", "optimizer", "best_val_f1", "history"}
    return metrics


@pytest.mark.parametrize("train_faces, batch_size, epochs", [
    (2800, 32, 10),   # 88 steps an epoch: 10 epochs are 880 >= 800 steps
    (933, 32, 27),    # 30 steps an epoch: 27 epochs are the first >= 800 steps
    (933, 8, 10),     # 117 steps an epoch
    (40, 16, 100),    # 3 steps an epoch would need 267 epochs: capped
])
def test_small_training_splits_train_more_epochs_by_default(train_au, train_faces, batch_size,
                                                            epochs):
    assert train_au.default_epochs(train_faces, batch_size) == epochs


@pytest.mark.slow
def test_example_synthetic(train_au, tmp_path, capsys):
    train_au.main(["--num-faces", "40", "--epochs", "1", "--batch-size", "16",
                   "--out", str(tmp_path)])
    metrics = _check_outputs(tmp_path, list(OPENGRAPHAU_MAIN_AUS), 1)
    log = capsys.readouterr().out
    assert log.count("val mean F1") == 1 and "ridge probe" in log
    f1 = [value for value in metrics["f1"].values() if not math.isnan(value)]
    assert metrics["mean_f1"] == pytest.approx(sum(f1) / len(f1))


@pytest.mark.slow
def test_example_features_file(train_au, features, tmp_path):
    train_au.main(["--features", features, "--epochs", "2", "--batch-size", "8",
                   "--out", str(tmp_path)])
    _check_outputs(tmp_path, ["AU1", "AU2", "AU4"], 2)


@pytest.mark.slow
def test_example_images_cnn(train_au, tmp_path):
    write_image_lists(tmp_path / "data", name="Toy", num_train=10, num_test=4)
    train_au.main(["--data-root", str(tmp_path / "data"), "--dataset", "Toy", "--fold", "1",
                   "--backbone", "cnn", "--image-size", "32", "--channels", "16",
                   "--epochs", "1", "--batch-size", "4", "--lam", "0", "--out",
                   str(tmp_path / "out")])
    _check_outputs(tmp_path / "out", ["AU#0", "AU#1", "AU#2"], 1)


@pytest.mark.slow
def test_resume_is_exact(train_au, features, tmp_path):
    # extending a run's --epochs: exact at a constant learning rate (a schedule spans --epochs,
    # so its exact resume is shown with the same --epochs in test_reliability.py)
    common = ["--features", features, "--batch-size", "8", "--lr", "0.01",
              "--lr-schedule", "constant", "--patience", "0"]
    train_au.main(common + ["--epochs", "2", "--out", str(tmp_path / "straight")])
    train_au.main(common + ["--epochs", "1", "--out", str(tmp_path / "split")])
    train_au.main(common + ["--epochs", "2", "--out", str(tmp_path / "split"),
                            "--resume", str(tmp_path / "split" / "checkpoint.pt")])
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(straight["optimizer"]["state"].values(),
                    resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight["rng"]["loader"], resumed["rng"]["loader"])
    assert [h["train_loss"] for h in straight["history"]] == \
        [h["train_loss"] for h in resumed["history"]]
    # the token normalisation and the thresholds resume too
    assert straight["token_norm"]["name"] == resumed["token_norm"]["name"]
    for key, value in straight["token_norm"]["steps"].items():
        assert all(torch.equal(value[k], resumed["token_norm"]["steps"][key][k]) for k in value)
    best_straight, best_resumed = (torch.load(tmp_path / run / "best.pt", weights_only=True)
                                   for run in ("straight", "split"))
    assert torch.equal(best_straight["thresholds"], best_resumed["thresholds"])
