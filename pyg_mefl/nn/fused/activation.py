"""ReLU gradients from saved activations through opaque operators, so that compiled training steps
store no boolean masks.

Under :func:`torch.compile`, AOTAutograd is free to save a ReLU's ``x > 0`` as a boolean mask
(one byte an element instead of four), and inductor's CPU kernels write such masks many times
slower than the ReLU itself (``benchmarks/README.md``, "Measured choices in the kernels"). The
backward passes below read tensors the step keeps anyway (a ReLU's
output, a batch norm's input and statistics) inside one custom operator each, which compiled
code calls as a library kernel: nothing is left for the partitioner to turn into a mask. In
eager mode they are the kernels autograd would run.
"""
from typing import List, Optional

import torch
from torch import Tensor


@torch.library.custom_op("pyg_mefl::relu_backward", mutates_args=())
def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    return torch.ops.aten.threshold_backward(grad, out, 0)


@_relu_backward.register_fake
def _(grad, out):
    return torch.empty_like(grad)


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        out, = ctx.saved_tensors
        return _relu_backward(grad.contiguous(), out)


def relu(x: Tensor) -> Tensor:
    r""":math:`\max(x, 0)`, whose backward reads the saved output (as ``torch.relu``'s does)
    inside one opaque operator."""
    return _Relu.apply(x)


@torch.library.custom_op("pyg_mefl::batch_norm_relu_backward", mutates_args=())
def batch_norm_relu_backward(grad: Tensor, x: Tensor, weight: Optional[Tensor],
                             bias: Optional[Tensor], mean: Tensor, invstd: Tensor, eps: float,
                             positive: Optional[Tensor]) -> List[Tensor]:
    r"""Gradients of :math:`\mathrm{ReLU}(\mathrm{BN}(\mathbf{x}))` (batch statistics ``mean``,
    ``invstd`` over channel dimension 1 of ``x`` ``[rows, channels, M]``) for the output
    gradient ``grad``: ``[grad_x, grad_weight, grad_bias]`` (the last two empty without
    ``weight``). The ReLU's sign is read from the mask ``positive``, or recomputed from ``x``
    when it is :obj:`None` (compiled code, see the module's docstring)."""
    if positive is None:  # BN(x) = x a + b per channel: one pass for the sign
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        view = (1, -1) + (1,) * (x.dim() - 2)
        positive = torch.addcmul(shift.view(view), x, scale.view(view)) > 0
    affine = weight is not None
    # (as bytes: a bool factor would be cast to the gradient's dtype first, and where() is slow)
    grad = grad * positive.view(torch.uint8)
    grads = torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None,
                                                      mean, invstd, True, eps,
                                                      [True, affine, affine])
    return [g if g is not None else x.new_empty(0) for g in grads]


@batch_norm_relu_backward.register_fake
def _(grad, x, weight, bias, mean, invstd, eps, positive):
    channels = x.size(1) if weight is not None else 0
    return [torch.empty_like(x), x.new_empty(channels), x.new_empty(channels)]
