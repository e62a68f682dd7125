"""What train_au.py saves is enough to predict as it evaluated: the token normalisation and the
thresholds in best.pt; early stopping holds across a resume."""
import json

import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_mefl import MEFL, FaceAUModel, TokenFaceDataset
from pyg_mefl.train import AUMetrics, predict
from pyg_mefl.transforms import load_token_norm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def offsets_file(tmp_path_factory):
    """90 faces, 5 tokens of 6 channels, 3 AUs on their own tokens, large per-face offsets,
    channels on different scales, some unknown labels."""
    generator = torch.Generator().manual_seed(0)
    labels = (torch.rand(90, 3, generator=generator) < 0.4).long()
    tokens = torch.randn(90, 5, 6, generator=generator) * 0.3
    tokens[:, :3, 0] += 2.0 * labels
    tokens += 2.0 * torch.randn(90, 1, 6, generator=generator)
    tokens *= torch.tensor([1.0, 5.0, 0.2, 1.0, 3.0, 1.0])
    labels[::11, 2] = -1
    path = tmp_path_factory.mktemp("offsets") / "faces.pt"
    torch.save({"tokens": tokens, "labels": labels}, path)
    return path


def test_predicting_from_best_pt_reproduces_the_reported_test_metrics(train_au, offsets_file,
                                                                      tmp_path):
    train_au.main(["--features", str(offsets_file), "--epochs", "3", "--batch-size", "16",
                   "--token-norm", "center+channels", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    token_norm = load_token_norm(tmp_path / "best.pt")
    assert repr(token_norm) == "TokenNorm('center+channels')"
    assert metrics["token_norm"] == "center+channels"
    # a user's prediction: the data as given, the saved transform, the saved thresholds
    dataset = TokenFaceDataset.from_file(offsets_file, transform=token_norm)
    model = FaceAUModel(MEFL(6, 3, num_sub_aus=0, edge_head=True))
    model.load_state_dict(best["model"])
    scores, target = predict(model, DataLoader(dataset.subset("test"), batch_size=7),
                             torch.device("cpu"))
    for thresholds, key in ((best["thresholds"], "mean_f1"), (0.5, "mean_f1_at_0.5")):
        recomputed = AUMetrics(3, thresholds)
        recomputed.update(scores, target)
        assert recomputed.compute()["mean_f1"] == pytest.approx(metrics[key], abs=1e-9), key
    assert list(metrics["thresholds"].values()) == pytest.approx(best["thresholds"].tolist())
    # without the transform the model sees other tokens and predicts otherwise
    raw = TokenFaceDataset.from_file(offsets_file)
    raw_scores, _ = predict(model, DataLoader(raw.subset("test"), batch_size=7),
                            torch.device("cpu"))
    assert not torch.allclose(raw_scores, scores)


def test_early_stopping_holds_across_a_resume(train_au, offsets_file, tmp_path):
    common = ["--features", str(offsets_file), "--batch-size", "16", "--token-norm", "center",
              "--out", str(tmp_path)]
    train_au.main(common + ["--epochs", "3", "--patience", "0"])
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    # make epoch 1 the best: with --patience 2 the run has ended after epoch 3
    checkpoint["history"][0]["val_mean_f1_calibrated"] = 101.0
    checkpoint["best_val_f1"] = 101.0
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    metrics = train_au.main(common + ["--epochs", "6", "--patience", "2",
                                      "--resume", str(tmp_path / "checkpoint.pt")])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert after["epoch"] == 3
    for key, value in checkpoint["model"].items():
        assert torch.equal(after["model"][key], value), key
    # with --patience 3 the same checkpoint trains on: epoch 4 runs, then the run stops
    metrics = train_au.main(common + ["--epochs", "6", "--patience", "3",
                                      "--resume", str(tmp_path / "checkpoint.pt")])
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]


def test_resume_with_another_token_norm_is_refused(train_au, offsets_file, tmp_path):
    train_au.main(["--features", str(offsets_file), "--epochs", "1", "--token-norm", "center",
                   "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="was trained with --token-norm center, this run has "
                                         "--token-norm channels"):
        train_au.main(["--features", str(offsets_file), "--epochs", "2", "--token-norm",
                       "channels", "--out", str(tmp_path),
                       "--resume", str(tmp_path / "checkpoint.pt")])
