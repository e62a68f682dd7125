"""The published training objective (docs/math.md §7): weighted asymmetric loss on AU probabilities
and the cross-entropy of the edge relation head."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module


def au_class_weights(labels: Tensor) -> Tensor:
    r"""Class weights :math:`w_a \propto 1 / \mathrm{rate}_a` of the weighted asymmetric loss,
    normalised to sum to the number of AUs, where :math:`\mathrm{rate}_a` is the positive rate
    of AU :math:`a` among its known training labels (``-1`` is unknown). An AU without a
    positive (or without a known label) counts as having one, which keeps its weight finite.

    Args:
        labels (torch.Tensor): Training labels ``[M, A]``, values ``1``, ``0``, ``-1``.

    Returns:
        ``[A]`` weights.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 2:
        shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected a tensor [M, A], got {shape}")
    known = (labels >= 0).sum(dim=0).clamp(min=1)
    positives = (labels == 1).sum(dim=0).clamp(min=1)
    weight = known.double() / positives.double()
    return (weight / weight.sum() * labels.size(1)).float()


class WeightedAsymmetricLoss(Module):
    r"""The weighted asymmetric loss of ME-GraphAU and OpenGraphAU (docs/math.md §7). Per element

    .. math::
        \ell_{b,a} = -w_a \Big[ y \log \max(p, \epsilon) + (1 - y)\, \mathrm{sg}(p)
        \log \max(1 - p, \epsilon) \Big],

    where :math:`\mathrm{sg}` stops the gradient (negatives are down-weighted by the detached
    probability), averaged over the known elements. Unknown labels (``-1``) and probabilities
    that are NaN (AUs a face graph lacks, see :class:`~pyg_mefl.MEFL`) are masked before the
    logarithms, so they contribute neither to the loss nor to the gradient.

    Args:
        weight (torch.Tensor, optional): ``[A]`` class weights, e.g. :func:`au_class_weights`
            (default: all ones).
        eps (float): Clamp of the probabilities inside the logarithms. (default: :obj:`1e-8`)

    Shapes:
        - **input:** probabilities :math:`(B, A)`, labels :math:`(B, A)` in ``{1, 0, -1}``
        - **output:** scalar
    """

    def __init__(self, weight: Optional[Tensor] = None, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight).float())

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        if probs.shape != target.shape:
            raise ValueError(f"probs {list(probs.shape)} and target {list(target.shape)} must "
                             f"have the same shape")
        if self.weight is not None and self.weight.numel() != probs.size(-1):
            raise ValueError(f"weight: has {self.weight.numel()} classes, probs has "
                             f"{probs.size(-1)}")
        known = (target >= 0) & ~torch.isnan(probs)
        p = torch.where(known, probs, torch.full_like(probs, 0.5))
        y = target.clamp(min=0).to(probs.dtype)
        positive = y * torch.log(p.clamp(min=self.eps))
        negative = (1 - y) * p.detach() * torch.log((1 - p).clamp(min=self.eps))
        loss = -(positive + negative)
        if self.weight is not None:
            loss = loss * self.weight
        return loss[known].sum() / known.sum().clamp(min=1)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, weighted={self.weight is not None}"


def relation_loss(edge_logits: Tensor, edge_y: Tensor) -> Tensor:
    r"""Cross-entropy of the 4-class edge relation head (docs/math.md §6-7) against the relation
    labels ``edge_y`` of :func:`~pyg_mefl.face_graph` (``-1``, unknown, ignored); zero (with a
    graph to ``edge_logits``) when no edge label is known.

    Shapes:
        - **input:** ``edge_logits`` :math:`(E, 4)`, ``edge_y`` :math:`(E)`
        - **output:** scalar
    """
    known = edge_y >= 0
    if not bool(known.any()):
        return edge_logits.sum() * 0.0
    return F.cross_entropy(edge_logits[known], edge_y[known])


class MEFLLoss(Module):
    r"""The stage-2 objective of ME-GraphAU: :class:`WeightedAsymmetricLoss` on the AU
    probabilities plus ``lam`` times :func:`relation_loss` on the edge head's logits.

    Args:
        weight (torch.Tensor, optional): AU class weights, as :class:`WeightedAsymmetricLoss`.
        lam (float): Weight :math:`\lambda` of the relation loss (``0`` disables it; the
            published values are 0.001-0.05). (default: :obj:`0.0`)

    Shapes:
        - **input:** ``probs`` :math:`(B, A)`, ``target`` :math:`(B, A)`, optionally
          ``edge_logits`` :math:`(E, 4)` and ``edge_y`` :math:`(E)`
        - **output:** scalar
    """

    def __init__(self, weight: Optional[Tensor] = None, lam: float = 0.0):
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam: expected a non-negative weight, got {lam}")
        self.au_loss = WeightedAsymmetricLoss(weight)
        self.lam = lam

    def forward(self, probs: Tensor, target: Tensor, edge_logits: Optional[Tensor] = None,
                edge_y: Optional[Tensor] = None) -> Tensor:
        loss = self.au_loss(probs, target)
        if self.lam == 0:
            return loss
        if edge_logits is None or edge_y is None:
            raise ValueError(f"MEFLLoss: lam={self.lam} needs edge_logits and edge_y (build the "
                             f"model with edge_head=True)")
        return loss + self.lam * relation_loss(edge_logits, edge_y)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"
