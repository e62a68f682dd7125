"""Gated messages over runs of edges that share a target (the gated GNN's uniform in-degree path)."""
import torch
from torch import Tensor


class _GatedRunMessages(torch.autograd.Function):
    # Saves the edge logits and the node-level values only: the gates and the gathered source
    # values ([E, C] each) are recomputed in the backward pass.
    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor, source: Tensor, run_length: int) -> Tensor:
        gate = _run_softmax(torch.sigmoid(logits), run_length)
        ctx.save_for_backward(logits, x, source)
        ctx.run_length = run_length
        return gate * x.index_select(0, source)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, x, source = ctx.saved_tensors
        sigmoid = torch.sigmoid(logits)
        gate = _run_softmax(sigmoid, ctx.run_length)
        grad_x = grad_logits = None
        if ctx.needs_input_grad[1]:  # d x[s] = g * eta, summed into each source
            grad_x = torch.zeros_like(x).index_add_(0, source, (grad_out * gate).to(x.dtype))
        if ctx.needs_input_grad[0]:  # softmax over each run, then the sigmoid (in place: one
            # [E, C] buffer besides the recomputed sigmoid and gate)
            work = x.index_select(0, source).mul_(grad_out)                 # d eta
            runs, gate_runs = work.view(-1, ctx.run_length, work.size(-1)), gate.view(
                -1, ctx.run_length, work.size(-1))
            runs.sub_((runs * gate_runs).sum(dim=1, keepdim=True)).mul_(gate_runs)  # d sigmoid
            del gate, gate_runs
            grad_logits = work.mul_(sigmoid).mul_(sigmoid.neg_().add_(1)).to(logits.dtype)
        return grad_logits, grad_x, None, None


def _run_softmax(values: Tensor, run_length: int) -> Tensor:
    return torch.softmax(values.view(-1, run_length, values.size(-1)), dim=1).view_as(values)


def gated_run_messages(logits: Tensor, x: Tensor, source: Tensor, run_length: int) -> Tensor:
    r"""Gated messages :math:`\boldsymbol{\eta}_e \odot \mathbf{x}_{s(e)}` with
    :math:`\boldsymbol{\eta} = \mathrm{softmax}(\sigma(\mathbf{l}))` over each run of
    ``run_length`` consecutive edges (the incoming edges of one target, per channel), as the
    gated GNN computes them on a graph with a uniform in-degree. Autograd keeps ``logits`` and
    the node-level ``x``: no ``[E, C]`` gate or gathered value is stored for the backward pass.

    Args:
        logits (torch.Tensor): ``[E, C]`` gate logits, edges sorted by target.
        x (torch.Tensor): ``[N, C]`` node values.
        source (torch.Tensor): ``[E]`` source node of each edge.
        run_length (int): Edges per target (the uniform in-degree).

    Returns:
        ``[E, C]``
    """
    return _GatedRunMessages.apply(logits, x, source, run_length)
