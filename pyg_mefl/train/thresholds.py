r"""Per-AU decision thresholds calibrated on a validation split."""
from typing import Dict, Tuple

import torch
from torch import Tensor

from .metrics import AUMetrics

# The published decision rule, and the threshold of an AU that validation cannot calibrate.
DEFAULT_THRESHOLD = 0.5


def calibrate_thresholds(scores: Tensor, target: Tensor,
                         fallback: float = DEFAULT_THRESHOLD) -> Tensor:
    r"""The threshold of each AU that maximises its F1 on ``(scores, target)``, e.g. a
    validation split: an AU is predicted present when its score is :math:`\geq` its threshold.

    For each AU the candidates are the cuts between consecutive distinct scores of the faces
    with known labels (the midpoint, so that a test score close to a validation score falls on
    the same side), and the lowest score (everything present). Among equally good cuts the
    highest threshold wins. An AU without a known positive label (F1 is undefined there, or
    ``0`` for every threshold) keeps ``fallback``.

    Args:
        scores (torch.Tensor): Scores :math:`(M, A)`; NaN for AUs a face does not hold.
        target (torch.Tensor): Labels :math:`(M, A)`, ``1``, ``0`` or ``-1`` (unknown).
        fallback (float): Threshold of AUs that cannot be calibrated. (default: :obj:`0.5`)

    Returns:
        Thresholds :math:`(A)`, float32.
    """
    if scores.dim() != 2 or scores.shape != target.shape:
        raise ValueError(f"scores {list(scores.shape)} and target {list(target.shape)}: "
                         f"expected the same shape [M, A]")
    thresholds = torch.full((scores.size(1),), float(fallback))
    for au in range(scores.size(1)):
        known = (target[:, au] >= 0) & ~torch.isnan(scores[:, au])
        score, positive = scores[known, au].double(), target[known, au] == 1
        num_positive = int(positive.sum())
        if num_positive == 0:
            continue
        score, order = score.sort(descending=True)
        true_positives = positive[order].double().cumsum(0)
        predicted = torch.arange(1, score.numel() + 1, dtype=torch.float64)
        f1 = 2 * true_positives / (predicted + num_positive)
        # a cut is possible only after the last of a run of equal scores
        last_of_run = torch.ones_like(positive)
        last_of_run[:-1] = score[:-1] > score[1:]
        f1 = torch.where(last_of_run, f1, torch.full_like(f1, -1.0))
        best = f1.max()
        cut = int(torch.nonzero(f1 == best)[0])  # fewest predicted positives among the best
        below = score[cut + 1] if cut + 1 < score.numel() else score[cut]
        thresholds[au] = float((score[cut] + below) / 2)
    return thresholds


def calibrated_metrics(scores: Tensor, target: Tensor) -> Tuple[Tensor, Dict[str, object]]:
    """The per-AU thresholds that :func:`calibrate_thresholds` finds on ``(scores, target)``
    and the :class:`~pyg_mefl.train.AUMetrics` there at those thresholds."""
    thresholds = calibrate_thresholds(scores, target)
    metrics = AUMetrics(target.size(1), thresholds)
    metrics.update(scores, target)
    return thresholds, metrics.compute()
