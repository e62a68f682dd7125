"""Streaming AU metrics (docs/math.md §7): per-AU F1 at a threshold, their mean, and accuracy."""
from typing import Dict, Union

import torch
from torch import Tensor


class AUMetrics:
    r"""Per-AU confusion counts accumulated over batches, and the metrics papers report:

    - ``f1``: per-AU F1 :math:`2\,TP / (2\,TP + FP + FN)` in percent (``0`` for an AU with
      no positive label and no positive prediction, as scikit-learn scores it; NaN for an AU
      without any known label);
    - ``mean_f1``: the mean of the per-AU F1 over the AUs with known labels, in percent;
    - ``accuracy``: the mean over those AUs of :math:`(TP + TN) / \text{known}`, in percent.

    A prediction is positive when :math:`p \geq` ``threshold``. Unknown labels (``-1``) and NaN
    probabilities (AUs a face graph lacks) are ignored.

    Args:
        num_aus (int): Number of AU columns :math:`A`.
        threshold (float or torch.Tensor): Decision threshold, one for all AUs or one per AU
            (:math:`(A)`, e.g. from :func:`~pyg_mefl.train.calibrate_thresholds`).
            (default: :obj:`0.5`)

    Example:
        >>> metrics = AUMetrics(12)
        >>> for probs, target in batches:   # [B, 12] each
        ...     metrics.update(probs, target)
        >>> metrics.compute()["mean_f1"]
    """

    def __init__(self, num_aus: int, threshold: Union[float, Tensor] = 0.5):
        if not isinstance(num_aus, int) or num_aus < 1:
            raise ValueError(f"num_aus: expected a positive int, got {num_aus!r}")
        self.num_aus = num_aus
        if isinstance(threshold, Tensor) and threshold.shape not in ((), (num_aus,)):
            raise ValueError(f"threshold: expected a float or a tensor [{num_aus}] (one per AU), "
                             f"got shape {list(threshold.shape)}")
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        """Zero the counts."""
        self.tp, self.fp, self.fn, self.tn = (torch.zeros(self.num_aus, dtype=torch.long)
                                              for _ in range(4))

    @torch.no_grad()
    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add a batch: ``probs`` and ``target`` of shape ``[B, A]``."""
        if probs.shape != target.shape or probs.dim() != 2 or probs.size(1) != self.num_aus:
            raise ValueError(f"probs {list(probs.shape)} and target {list(target.shape)}: "
                             f"expected the same shape [B, {self.num_aus}]")
        known = (target >= 0) & ~torch.isnan(probs)
        threshold = self.threshold.to(probs.device) if isinstance(self.threshold, Tensor) \
            else self.threshold
        predicted = (probs >= threshold) & known
        actual = (target == 1) & known
        self.tp += (predicted & actual).sum(dim=0).cpu()
        self.fp += (predicted & ~actual & known).sum(dim=0).cpu()
        self.fn += (~predicted & actual).sum(dim=0).cpu()
        self.tn += (~predicted & ~actual & known).sum(dim=0).cpu()

    def compute(self) -> Dict[str, object]:
        """``{"f1": [A] tensor, "mean_f1": float, "accuracy": float}``, all in percent."""
        known = self.tp + self.fp + self.fn + self.tn
        denominator = (2 * self.tp + self.fp + self.fn).double()
        f1 = torch.where(denominator > 0, 2 * self.tp / denominator.clamp(min=1),
                         torch.zeros_like(denominator))
        f1 = torch.where(known > 0, f1, torch.full_like(f1, float("nan"))) * 100
        accuracy = (self.tp + self.tn) / known.double() * 100
        return {"f1": f1, "mean_f1": _nanmean(f1), "accuracy": _nanmean(accuracy)}


def _nanmean(values: Tensor) -> float:
    return values.nanmean().item() if bool((~torch.isnan(values)).any()) else float("nan")
