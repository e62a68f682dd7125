"""The slot norms of the fast paths: rows that cycle through the slots, inference in place, and
``r + ReLU(Norm(x))`` as one autograd function around torch's fused batch norm."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Module

from ..norm import SlotBatchNorm, apply_norm
from ..sync_norm import is_syncing
from .activation import batch_norm_relu_backward


def norm_rows(norm: Optional[Module], x: Tensor, slot: Optional[Tensor],
              cyclic: bool = False) -> Tensor:
    """:func:`~pyg_mefl.nn.norm.apply_norm`, or, when ``cyclic`` (the rows cycle through the
    slots), :meth:`SlotBatchNorm.cyclic`: torch's fused batch norm."""
    if cyclic and isinstance(norm, SlotBatchNorm):
        return norm.cyclic(x.view(-1, norm.num_slots, x.size(-1))).view_as(x)
    return apply_norm(norm, x, slot)


def norm_rows_(norm: Optional[Module], x: Tensor, slot: Optional[Tensor],
                cyclic: bool = False) -> Tensor:
    r""":func:`norm_rows` that may overwrite ``x`` (a new tensor no one else holds): outside
    autograd, a :class:`SlotBatchNorm` that evaluates with its running statistics is the affine
    map :math:`x \gamma_s / \sqrt{\sigma^2_s + \epsilon} + (\beta_s - \mu_s \gamma_s /
    \sqrt{\sigma^2_s + \epsilon})` per slot :math:`s`, applied in place in one pass; any other
    norm, or autograd, runs out of place. Returns the result (``x`` where in place)."""
    if not isinstance(norm, SlotBatchNorm) or norm.training or not norm.track_running_stats \
            or torch.is_grad_enabled():
        return norm_rows(norm, x, slot, cyclic)
    scale, shift = norm.inference_affine()
    if cyclic:  # [rows, slots, *]: the slot's affine broadcast over the other dimensions
        rows = x.view((-1, norm.num_slots) + x.shape[1:])
        affine = (norm.num_slots,) + (1,) * (x.dim() - 1)
    else:
        rows, scale, shift = x, scale[slot], shift[slot]
        affine = (x.size(0),) + (1,) * (x.dim() - 1)
    if norm.num_channels is not None:  # (slot, channel) statistics: the channel is last
        affine = affine[:-1] + (x.size(-1),)
    torch.addcmul(shift.view(affine), rows, scale.view(affine), out=rows)
    return x


def add_relu_norm(norm: Optional[Module], x: Tensor, residual: Tensor, slot: Optional[Tensor],
                  cyclic: bool = False) -> Tensor:
    r""":math:`\mathbf{r} + \mathrm{ReLU}(\mathrm{Norm}(\mathbf{x}))` with ``norm`` as in
    :func:`norm_rows`. A :class:`SlotBatchNorm` training on cyclic rows under autograd runs as
    one autograd function around torch's fused batch norm that stores ``x``, the per-slot
    statistics and the ReLU's mask (one byte an element) instead of the norm's output, and
    writes the result in the norm's output buffer. The running statistics are updated as
    :meth:`SlotBatchNorm.cyclic` updates them."""
    if cyclic and isinstance(norm, SlotBatchNorm) and norm.training and \
            torch.is_grad_enabled() and norm.momentum is not None and \
            not is_syncing(norm.process_group) and \
            (norm.weight is None or norm.weight.dtype == x.dtype):
        # BN's channel: the slot, or the (slot, channel) pair; the rows cycle through the slots
        flat = x.view(-1, norm.num_slots, math.prod(x.shape[1:])) if norm.num_channels is None \
            else x.view(-1, norm.num_slots * x.size(-1), 1)
        if flat.numel() > flat.size(1):  # torch's BN refuses one value per channel
            weight, bias, running_mean, running_var = (
                None if t is None else t.view(-1)
                for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))
            out = _AddReluNorm.apply(flat, residual.reshape(flat.shape), weight, bias,
                                     running_mean, running_var, norm.momentum, norm.eps)
            if norm.track_running_stats:
                norm.num_batches_tracked.add_(1)
            return out.view_as(x)
    return residual + torch.relu(norm_rows(norm, x, slot, cyclic))


class _AddReluNorm(torch.autograd.Function):
    # r + relu(BN(x)) with batch statistics over channel dim 1 of x [rows, channels, M] (torch's
    # fused batch norm, which updates the running statistics); saves x and the ReLU's mask, or
    # under torch.compile recomputes the mask in the backward pass (batch_norm_relu_backward).
    @staticmethod
    def forward(ctx, x: Tensor, residual: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], momentum: float, eps: float) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var,
                                                    True, momentum, eps)
        positive = None if torch.compiler.is_compiling() else out > 0
        ctx.save_for_backward(x, weight, bias, mean, invstd, positive)
        ctx.eps = eps
        return out.relu_().add_(residual)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, bias, mean, invstd, positive = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = batch_norm_relu_backward(
            grad.contiguous(), x, weight, bias, mean, invstd, ctx.eps, positive)
        if weight is None:
            grad_weight = grad_bias = None
        return grad_x, grad, grad_weight, grad_bias, None, None, None, None
