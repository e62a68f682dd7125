"""Per-edge matrix products of node-level matrices, without materialising the lifted operands."""
from typing import Optional

import torch
from torch import Tensor

# Elements of the per-chunk operands; bounds the transient memory of a chunk (~64 MB in float32).
_CHUNK_ELEMENTS = 1 << 24


def _chunks(num_edges: int, per_edge: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_edge, 1))
    return [(start, min(start + step, num_edges)) for start in range(0, num_edges, step)]


def _pick(t: Tensor, index: Optional[Tensor], start: int, end: int) -> Tensor:
    return t[start:end] if index is None else t.index_select(0, index[start:end])


def _mm(a: Tensor, b: Tensor, transpose_b: bool) -> Tensor:
    return torch.bmm(a, b.transpose(1, 2) if transpose_b else b)


def _accumulate(grad: Tensor, index: Optional[Tensor], start: int, end: int, part: Tensor) -> None:
    if index is None:
        grad[start:end] = part
    else:
        grad.index_add_(0, index[start:end], part)


class _GatherMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, a_index: Optional[Tensor], b_index: Optional[Tensor],
                transpose_b: bool, num_edges: int) -> Tensor:
        rows, cols = a.size(1), (b.size(1) if transpose_b else b.size(2))
        out = a.new_empty(num_edges, rows, cols)
        per_edge = a[0].numel() + b[0].numel() + rows * cols
        for start, end in _chunks(num_edges, per_edge):
            out[start:end] = _mm(_pick(a, a_index, start, end), _pick(b, b_index, start, end),
                                 transpose_b)
        ctx.save_for_backward(a, b, a_index, b_index)
        ctx.transpose_b = transpose_b
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, b, a_index, b_index = ctx.saved_tensors
        grad_a = torch.zeros_like(a) if ctx.needs_input_grad[0] else None
        grad_b = torch.zeros_like(b) if ctx.needs_input_grad[1] else None
        per_edge = 2 * (a[0].numel() + b[0].numel()) + grad_out[0].numel()
        for start, end in _chunks(grad_out.size(0), per_edge):
            g = grad_out[start:end]
            a_part, b_part = _pick(a, a_index, start, end), _pick(b, b_index, start, end)
            if grad_a is not None:  # out = a @ op(b)  =>  da = g @ op(b)^T
                _accumulate(grad_a, a_index, start, end, _mm(g, b_part, not ctx.transpose_b))
            if grad_b is not None:  # db = g^T a  (transposed) or a^T g
                part = torch.bmm(g.transpose(1, 2), a_part) if ctx.transpose_b else \
                    torch.bmm(a_part.transpose(1, 2), g)
                _accumulate(grad_b, b_index, start, end, part)
        return grad_a, grad_b, None, None, None, None


def gather_matmul(a: Tensor, b: Tensor, a_index: Optional[Tensor] = None,
                  b_index: Optional[Tensor] = None, transpose_b: bool = False) -> Tensor:
    r"""Batched product :math:`\mathbf{O}_e = \mathbf{A}_{a(e)} \, \mathrm{op}(\mathbf{B}_{b(e)})`
    for every edge :math:`e`, where :math:`\mathrm{op}` is the identity or the transpose.

    Equal to ``a[a_index] @ b[b_index]`` (``.mT`` on the second with ``transpose_b``), but the
    gathered ``[E, ...]`` operands exist only one chunk at a time, in the forward and in the
    backward pass: autograd keeps the node-level inputs and the indices, not ``E`` copies.

    Args:
        a (torch.Tensor): ``[Na, P, Q]`` node-level, or ``[E, P, Q]`` per edge if ``a_index`` is
            :obj:`None`.
        b (torch.Tensor): ``[Nb, Q, R]`` (``[Nb, R, Q]`` with ``transpose_b``), node-level, or
            per edge if ``b_index`` is :obj:`None`.
        a_index, b_index (torch.Tensor, optional): ``[E]`` rows of ``a`` / ``b`` for each edge.

    Returns:
        ``[E, P, R]``
    """
    num_edges = (a_index if a_index is not None else b_index if b_index is not None else a).size(0)
    return _GatherMatmul.apply(a, b, a_index, b_index, transpose_b, num_edges)

