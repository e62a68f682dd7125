"""Per-AU thresholds against a brute-force search, and AUMetrics with per-AU thresholds."""
import math

import pytest
import torch

from pyg_mefl.train import AUMetrics, calibrate_thresholds, calibrated_metrics


def _f1(scores, target, threshold):
    """F1 in percent of one AU, written out from the counts (None: no known label)."""
    pairs = [(s, t) for s, t in zip(scores.tolist(), target.tolist())
             if t >= 0 and not math.isnan(s)]
    tp = sum(1 for s, t in pairs if s >= threshold and t == 1)
    fp = sum(1 for s, t in pairs if s >= threshold and t == 0)
    fn = sum(1 for s, t in pairs if s < threshold and t == 1)
    return 100.0 * 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


def _data(seed, num_faces=37, num_aus=5):
    generator = torch.Generator().manual_seed(seed)
    target = (torch.rand(num_faces, num_aus, generator=generator) < 0.3).long()
    scores = target * 0.3 + torch.rand(num_faces, num_aus, generator=generator)
    scores = (scores * 8).round() / 8  # ties
    target[torch.rand(num_faces, num_aus, generator=generator) < 0.1] = -1
    scores[3, 1] = float("nan")
    return scores, target


@pytest.mark.parametrize("seed", range(6))
def test_calibrated_thresholds_reach_the_best_f1_of_any_threshold(seed):
    scores, target = _data(seed)
    thresholds = calibrate_thresholds(scores, target)
    for au in range(scores.size(1)):
        candidates = [v for v in scores[:, au].tolist() if not math.isnan(v)] + [math.inf]
        best = max(_f1(scores[:, au], target[:, au], c) for c in candidates)
        assert _f1(scores[:, au], target[:, au], thresholds[au].item()) == pytest.approx(best)
        # strictly between scores (or at the lowest): no validation score sits on it
        known = scores[:, au][~torch.isnan(scores[:, au]) & (target[:, au] >= 0)]
        assert thresholds[au] <= known.max()
    _, metrics = calibrated_metrics(scores, target)
    per_au = [_f1(scores[:, au], target[:, au], thresholds[au].item()) for au in range(5)]
    assert metrics["mean_f1"] == pytest.approx(sum(per_au) / 5)


def test_aus_validation_cannot_calibrate_keep_the_fallback():
    scores = torch.tensor([[0.9, 0.2, 0.7], [0.1, 0.8, 0.6], [0.4, 0.3, 0.2]])
    target = torch.tensor([[1, 0, -1], [0, 0, -1], [1, 0, -1]])
    thresholds = calibrate_thresholds(scores, target, fallback=0.4)
    assert thresholds[1].item() == pytest.approx(0.4) and thresholds[2].item() == pytest.approx(0.4)
    # AU 0: positives score 0.9 and 0.4, the negative 0.1: the cut lies between 0.4 and 0.1
    assert thresholds[0].item() == pytest.approx(0.25)


def test_au_metrics_per_au_thresholds_equal_one_threshold_per_run():
    scores, target = _data(7)
    thresholds = torch.tensor([0.2, 0.5, 0.8, 1.1, 0.0])
    metrics = AUMetrics(5, thresholds)
    metrics.update(scores[:20], target[:20])
    metrics.update(scores[20:], target[20:])
    f1 = metrics.compute()["f1"]
    for au in range(5):
        single = AUMetrics(5, thresholds[au].item())
        single.update(scores, target)
        assert f1[au].item() == pytest.approx(single.compute()["f1"][au].item(), nan_ok=True)
    with pytest.raises(ValueError, match=r"threshold: expected a float or a tensor \[5\]"):
        AUMetrics(5, torch.zeros(4))
    with pytest.raises(ValueError, match="expected the same shape"):
        calibrate_thresholds(scores, target[:, :3])
