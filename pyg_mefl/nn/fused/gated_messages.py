"""Gated messages over runs of edges that share a target (the gated GNN's uniform in-degree path),
and over complete graphs, where the source values are a broadcast of the node values."""
from typing import Optional, Tuple

import torch
from torch import Tensor


class _GatedRunMessages(torch.autograd.Function):
    # Saves the edge logits and the node-level values only: the gates and the gathered source
    # values ([E, C] each) are recomputed in the backward pass.
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor, source: Optional[Tensor],
                run_length: int) -> Tensor:
        ctx.save_for_backward(logits, x, source)
        ctx.run_length = run_length
        return _times_sources(_gates(logits, x, run_length)[0], x, source, run_length)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, x, source = ctx.saved_tensors
        k = ctx.run_length
        gate, sigmoid = _gates(logits, x, k, keep_sigmoid=ctx.needs_input_grad[0])
        work = grad_out * gate                                               # g * eta
        grad_x = grad_logits = None
        if ctx.needs_input_grad[1]:  # d x[s]: g * eta summed over the edges leaving s
            if source is None:  # complete graphs: a sum over the target axis of each face
                grad_x = work.view(-1, k, k, x.size(-1)).sum(dim=1).view_as(x).to(x.dtype)
            else:
                grad_x = torch.zeros_like(x).index_add_(0, source, work.to(x.dtype))
        if ctx.needs_input_grad[0]:
            # With d eta = g * x[s], through the softmax of each run d sigma = eta * d eta -
            # eta * sum_run(eta * d eta), then through the sigmoid d l = d sigma * sigma *
            # (1 - sigma); in place in one [E, C] buffer besides the recomputed gates and sigma.
            runs = _times_sources(work, x, source, k).view(-1, k, work.size(-1))
            runs.addcmul_(gate.view_as(runs), runs.sum(dim=1, keepdim=True), value=-1)
            grad_logits = torch.ops.aten.sigmoid_backward.grad_input(
                work, sigmoid, grad_input=work).to(logits.dtype)
        return grad_logits, grad_x, None, None


def _gates(logits: Tensor, x: Tensor, run_length: int,
           keep_sigmoid: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    r"""A new ``[E, C]`` tensor (of the dtype of a product of ``logits`` and ``x``) of
    :math:`\mathrm{softmax}(\sigma(\mathbf{l}))` over each run, computed in place:
    :math:`\sigma \in (0, 1)`, so :math:`e^\sigma` needs no shift by the run's maximum. With
    ``keep_sigmoid``, :math:`\sigma(\mathbf{l})` stays in a second buffer and is returned too
    (the backward pass needs it), else :obj:`None`."""
    sigmoid = torch.sigmoid(logits.contiguous()).to(torch.promote_types(logits.dtype, x.dtype))
    gate = sigmoid.exp() if keep_sigmoid else sigmoid.exp_()
    runs = gate.view(-1, run_length, gate.size(-1))
    runs.div_(runs.sum(dim=1, keepdim=True))
    return gate, sigmoid if keep_sigmoid else None


def _times_sources(values: Tensor, x: Tensor, source: Optional[Tensor], run_length: int
                   ) -> Tensor:
    """``values[e] * x[source[e]]`` in place in ``values``; ``source=None``: complete graphs of
    ``run_length`` nodes, the source values a broadcast of each face's ``[1, n, C]`` node block."""
    if source is None:
        n = run_length
        values.view(-1, n, n, values.size(-1)).mul_(x.view(-1, 1, n, x.size(-1)))
        return values
    return values.mul_(x.index_select(0, source))


def gated_run_messages(logits: Tensor, x: Tensor, source: Optional[Tensor],
                       run_length: int) -> Tensor:
    r"""Gated messages :math:`\boldsymbol{\eta}_e \odot \mathbf{x}_{s(e)}` with
    :math:`\boldsymbol{\eta} = \mathrm{softmax}(\sigma(\mathbf{l}))` over each run of
    ``run_length`` consecutive edges (the incoming edges of one target, per channel), as the
    gated GNN computes them on a graph with a uniform in-degree. Autograd keeps ``logits`` and
    the node-level ``x``: no ``[E, C]`` gate or gathered value is stored for the backward pass.

    Args:
        logits (torch.Tensor): ``[E, C]`` gate logits, edges sorted by target.
        x (torch.Tensor): ``[N, C]`` node values.
        source (torch.Tensor, optional): ``[E]`` source node of each edge, or :obj:`None` for
            complete graphs over consecutive blocks of ``n = run_length`` nodes in the reference
            order (edge :math:`e` from node :math:`n \lfloor e / n^2 \rfloor + (e \bmod n)`):
            the source values are then a broadcast, and their gradient a sum over each face's
            target axis, with no gather or scatter.
        run_length (int): Edges per target (the uniform in-degree).

    Returns:
        ``[E, C]``
    """
    return _GatedRunMessages.apply(logits, x, source, run_length)
