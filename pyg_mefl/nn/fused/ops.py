"""Per-edge matrix products of node-level matrices, without materialising the lifted operands."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

# Elements of the per-chunk operands; bounds the transient memory of a chunk (~16 MB in float32:
# at B = 8, N = 27 a chunk still holds ~600 edges, so the products stay large).
_CHUNK_ELEMENTS = 1 << 22

# ``k``: the edges come in consecutive runs of ``k`` per node, ``index[e] == e // k`` (a graph
# built target by target with the same in-degree everywhere). A promise made where the graph is
# built (see pyg_mefl.data.uniform_in_degree), never read back from the index values.
RunLength = Optional[int]


def _apply_autocast(function, *args):
    """``function.apply(*args)`` as autocast would run its products: under an active autocast the
    floating-point tensors are cast to its dtype first (differentiably) and the function runs
    with autocast off, so that its forward and backward passes see one dtype."""
    tensors = [arg for arg in args if isinstance(arg, Tensor)]
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = torch.get_autocast_dtype(device)
    args = [arg.to(dtype) if isinstance(arg, Tensor) and arg.is_floating_point() else arg
            for arg in args]
    with torch.autocast(device, enabled=False):
        return function.apply(*args)


def _spans(total: int, step: int) -> List[Tuple[int, int]]:
    """``[start, end)`` of consecutive chunks of ``step`` out of ``total``; one span under
    ``torch.export``, where ``total`` may be symbolic (a dynamic batch) and a loop over its
    value would fix it to the traced size."""
    if torch.compiler.is_exporting():
        return [(0, total)]
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _chunks(num_edges: int, per_edge: int, run_length: RunLength) -> List[Tuple[int, int]]:
    group = run_length or 1
    return _spans(num_edges, max(1, _CHUNK_ELEMENTS // max(per_edge * group, 1)) * group)


def _per_edge(a: Tensor, b: Tensor, run_length: RunLength) -> int:
    # elements a chunk materialises per edge: gathered rows (b is shared by a run of k edges)
    return a.size(1) * a.size(2) + b.size(1) * b.size(2) // (run_length or 1)


def _pick(t: Tensor, index: Optional[Tensor], start: int, end: int) -> Tensor:
    return t[start:end] if index is None else t.index_select(0, index[start:end])


def _op(b: Tensor, transpose_b: bool) -> Tensor:
    return b.transpose(1, 2) if transpose_b else b


def _edge_product(a_part: Tensor, b: Tensor, b_index: Optional[Tensor], transpose_b: bool,
                  run_length: RunLength, start: int, end: int,
                  out: Optional[Tensor] = None) -> Tensor:
    """``a_part[e] @ op(b[b_index[e]])`` for the edges ``[start, end)`` (``a_part`` holds their
    left operands). With ``run_length`` ``k`` the ``k`` edges of a run share ``b``'s row: one
    product per run with a ``k`` times taller left operand, and ``b`` is never gathered."""
    if run_length is None:
        return torch.bmm(a_part, _op(_pick(b, b_index, start, end), transpose_b), out=out)
    k = run_length
    rows = a_part.size(1)
    b_part = _op(b[start // k:end // k], transpose_b)
    out = torch.bmm(a_part.reshape(-1, k * rows, a_part.size(2)), b_part,
                    out=None if out is None else out.view(-1, k * rows, out.size(2)))
    return out.view(end - start, rows, -1)


def _accumulate(grad: Tensor, index: Optional[Tensor], start: int, end: int, part: Tensor) -> None:
    if index is None:
        grad[start:end] = part
    else:
        grad.index_add_(0, index[start:end], part)


def _reduce_product(grad: Tensor, x: Tensor, y: Tensor, index: Optional[Tensor],
                    run_length: RunLength, start: int, end: int) -> None:
    """``grad[index[e]] += x[e]^T @ y[e]`` for the edges ``[start, end)`` (one product per run
    with ``run_length``, summing over the run's edges inside the product)."""
    if run_length is None:
        _accumulate(grad, index, start, end, torch.bmm(x.transpose(1, 2), y))
        return
    k = run_length
    x = x.reshape(-1, k * x.size(1), x.size(2))
    y = y.reshape(-1, k * y.size(1), y.size(2))
    grad[start // k:end // k] += torch.bmm(x.transpose(1, 2), y)


class _GatherMatmul(torch.autograd.Function):
    # Chunked over the edges; when b_index runs in equal consecutive runs (run_length) each run
    # is one product and b is neither gathered nor scattered back (see _edge_product).
    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, a_index: Optional[Tensor], b_index: Optional[Tensor],
                transpose_b: bool, num_edges: int, run_length: RunLength) -> Tensor:
        rows, cols = a.size(1), (b.size(1) if transpose_b else b.size(2))
        out = a.new_empty(num_edges, rows, cols)
        per_edge = _per_edge(a, b, run_length) + rows * cols
        for start, end in _chunks(num_edges, per_edge, run_length):
            _edge_product(_pick(a, a_index, start, end), b, b_index, transpose_b, run_length, start,
                          end, out=out[start:end])
        ctx.save_for_backward(a, b, a_index, b_index)
        ctx.transpose_b = transpose_b
        ctx.run_length = run_length
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        a, b, a_index, b_index = ctx.saved_tensors
        transpose_b, run_length = ctx.transpose_b, ctx.run_length
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:  # rows gathered by an index or shared by a run accumulate,
            # the others are set
            grad_a = torch.zeros_like(a) if a_index is not None else torch.empty_like(a)
        if ctx.needs_input_grad[1]:
            grad_b = torch.zeros_like(b) if b_index is not None or run_length is not None \
                else torch.empty_like(b)
        grad_out = grad_out.contiguous()
        per_edge = 2 * _per_edge(a, b, run_length) + grad_out.size(1) * grad_out.size(2)
        for start, end in _chunks(grad_out.size(0), per_edge, run_length):
            g = grad_out[start:end]
            if grad_a is not None:  # out = a @ op(b)  =>  da = g @ op(b)^T
                part = _edge_product(g, b, b_index, not transpose_b, run_length, start, end)
                _accumulate(grad_a, a_index, start, end, part)
            if grad_b is not None:  # db = g^T a  (transposed) or a^T g
                a_part = _pick(a, a_index, start, end)
                x, y = (g, a_part) if transpose_b else (a_part, g)
                _reduce_product(grad_b, x, y, b_index, run_length, start, end)
        return grad_a, grad_b, None, None, None, None, None


def gather_matmul(a: Tensor, b: Tensor, a_index: Optional[Tensor] = None,
                  b_index: Optional[Tensor] = None, transpose_b: bool = False,
                  run_length: RunLength = None) -> Tensor:
    r"""Batched product :math:`\mathbf{O}_e = \mathbf{A}_{a(e)} \, \mathrm{op}(\mathbf{B}_{b(e)})`
    for every edge :math:`e`, where :math:`\mathrm{op}` is the identity or the transpose.

    Equal to ``a[a_index] @ b[b_index]`` (``.mT`` on the second with ``transpose_b``), but the
    gathered ``[E, ...]`` operands exist only one chunk at a time, in the forward and in the
    backward pass: autograd keeps the node-level inputs and the indices, not ``E`` copies.
    When the caller knows that ``b_index`` groups the edges in equal consecutive runs per node
    (``b_index[e] == e // run_length``: edges sorted by target with a uniform in-degree, see
    :func:`~pyg_mefl.data.uniform_in_degree`), each run is a single matrix product and ``b`` is
    never gathered.

    Args:
        a (torch.Tensor): ``[Na, P, Q]`` node-level, or ``[E, P, Q]`` per edge if ``a_index`` is
            :obj:`None`.
        b (torch.Tensor): ``[Nb, Q, R]`` (``[Nb, R, Q]`` with ``transpose_b``), node-level, or
            per edge if ``b_index`` is :obj:`None`.
        a_index, b_index (torch.Tensor, optional): ``[E]`` rows of ``a`` / ``b`` for each edge.
        run_length (int, optional): ``k`` with ``b_index == arange(E) // k``, a promise the
            caller makes (it is not checked).

    Returns:
        ``[E, P, R]``
    """
    num_edges = (a_index if a_index is not None else b_index if b_index is not None else a).size(0)
    return _apply_autocast(_GatherMatmul, a, b, a_index, b_index, transpose_b, num_edges,
                           run_length)


class _SoftmaxColumnMoments(torch.autograd.Function):
    # Forward and backward run chunk by chunk over the edges and keep only the node-level inputs:
    # the [E, P, R] attention maps are recomputed in the backward pass, never stored.
    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, gram: Optional[Tensor], source: Tensor,
                target: Tensor, run_length: RunLength):
        num_edges, cols = source.numel(), key.size(1)
        mass = query.new_empty(num_edges, cols)
        second = query.new_empty(num_edges) if gram is not None else None
        per_edge = _per_edge(query, key, run_length) + 2 * query.size(1) * cols
        for start, end in _chunks(num_edges, per_edge, run_length):
            scores = _edge_product(_pick(query, source, start, end), key, target, True, run_length,
                                   start, end)
            attn = torch.softmax(scores, dim=-1)
            torch.sum(attn, dim=1, out=mass[start:end])
            if second is not None:
                weighted = _edge_product(attn, gram, target, False, run_length, start, end)
                torch.sum((weighted * attn).flatten(1), dim=1, out=second[start:end])
        ctx.save_for_backward(query, key, gram, source, target)
        ctx.run_length = run_length
        return mass, second

    @staticmethod
    def backward(ctx, grad_mass: Optional[Tensor], grad_second: Optional[Tensor]):
        query, key, gram, source, target = ctx.saved_tensors
        run_length = ctx.run_length
        num_edges, rows, cols = source.numel(), query.size(1), key.size(1)
        grad_query = torch.zeros_like(query) if ctx.needs_input_grad[0] else None
        grad_key = torch.zeros_like(key) if ctx.needs_input_grad[1] else None
        with_second = gram is not None and grad_second is not None
        grad_gram = torch.zeros_like(gram) if with_second and ctx.needs_input_grad[2] else None
        if grad_mass is None:
            grad_mass = query.new_zeros(num_edges, cols)
        symmetric = gram + gram.transpose(1, 2) if with_second else None  # d tr(AGA^T)/dA
        per_edge = _per_edge(query, key, run_length) + 6 * rows * cols
        for start, end in _chunks(num_edges, per_edge, run_length):
            query_part = _pick(query, source, start, end)
            scores = _edge_product(query_part, key, target, True, run_length, start, end)
            attn = torch.softmax(scores, dim=-1)
            grad_attn = grad_mass[start:end].unsqueeze(1).expand_as(attn)
            if with_second:
                scale = grad_second[start:end].view(-1, 1, 1)
                if grad_gram is not None:  # d/dG = A^T A
                    _reduce_product(grad_gram, attn * scale, attn, target, run_length, start, end)
                grad_attn = grad_attn + scale * _edge_product(attn, symmetric, target, False,
                                                              run_length, start, end)
            # softmax: dS = A * (dA - rowsum(dA * A))
            grad_scores = attn * (grad_attn - (grad_attn * attn).sum(dim=-1, keepdim=True))
            if grad_query is not None:  # S = Q_s K_t^T
                part = _edge_product(grad_scores, key, target, False, run_length, start, end)
                _accumulate(grad_query, source, start, end, part)
            if grad_key is not None:
                _reduce_product(grad_key, grad_scores, query_part, target, run_length, start, end)
        return grad_query, grad_key, grad_gram, None, None, None


def _segments(start: int, end: int, nodes: int) -> List[Tuple[int, int, int]]:
    """``(graph, first, last)`` for each graph of ``nodes`` nodes that the nodes
    ``[start, end)`` touch, with ``[first, last)`` the nodes inside it."""
    out = []
    while start < end:
        graph = start // nodes
        last = min(end, (graph + 1) * nodes)
        out.append((graph, start, last))
        start = last
    return out


def _target_scores(stacked_query: Tensor, key_t: Tensor, nodes: int, start: int, end: int,
                   out: Optional[Tensor]) -> Tensor:
    """``[t - start] = Q_g K_t^T`` (``[n P, R]``) for the target nodes ``t`` in
    ``[start, end)``: the scores of all the edges into ``t``, with ``Q_g`` the stacked queries of
    the graph ``g`` of ``t`` (rows ``(j, d)``), shared by its targets as a stride-0 batch.
    Written into ``out``, or (``out`` :obj:`None`) into a new tensor. Under ``torch.export``
    (one span of all the targets, see :func:`_spans`) one broadcast product of every graph's
    queries with its targets' keys, without a loop over the (symbolic) number of graphs."""
    if torch.compiler.is_exporting():
        per_graph = key_t.view(-1, nodes, key_t.size(1), key_t.size(2))
        return torch.matmul(stacked_query.unsqueeze(1), per_graph).flatten(0, 1)
    parts = [torch.bmm(stacked_query[graph].expand(last - first, -1, -1), key_t[first:last],
                       out=None if out is None else out[first - start:last - start])
             for graph, first, last in _segments(start, end, nodes)]
    return out if out is not None else torch.cat(parts)


def _target_step(block: int) -> int:
    """Target nodes per chunk of :class:`_CompleteSoftmaxColumnMoments`, ``block`` elements each:
    its (at most 4) workspace buffers share ``_CHUNK_ELEMENTS``. Small chunks matter beyond
    memory: a chunk's maps then stay in cache from one step to the next (``benchmarks/README.md``,
    "Measured choices in the kernels")."""
    return max(1, _CHUNK_ELEMENTS // (4 * block))


def _rows(t: Optional[Tensor], start: int, end: int) -> Optional[Tensor]:
    return None if t is None else t[start:end]


def _view(t: Optional[Tensor], shape) -> Optional[Tensor]:
    return None if t is None else t.view(shape)


class _CompleteSoftmaxColumnMoments(torch.autograd.Function):
    # softmax_column_moments on complete graphs of ``nodes`` nodes in the reference edge order.
    # Chunked over target nodes, with workspace buffers reused by the chunks; a target's maps
    # are one [n P, R] block (rows (source j, row d)), computed from its graph's stacked
    # queries without a gather, and recomputed in the backward pass. Under torch.compile the
    # chunks' ops are out of place and their results concatenated: functionalised, a write into
    # a view of a workspace (or of a whole output) rewrites the entire base buffer, 4 x the
    # workspace per op (the compiled training step ran slower than eager).
    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, gram: Optional[Tensor], nodes: int):
        num_nodes, rows, cols = query.size(0), query.size(1), key.size(1)
        stacked_query = query.reshape(-1, nodes * rows, query.size(2))     # [graphs, n P, X]
        key_t = key.transpose(1, 2)
        step = _target_step(nodes * rows * cols)
        eager = not torch.compiler.is_compiling()
        workspace = query.new_empty(2, min(step, num_nodes), nodes * rows, cols) if eager else None
        mass = query.new_empty(num_nodes, nodes, cols) if eager else None  # edge t n + j: t n + j
        second = query.new_empty(num_nodes, nodes) if eager and gram is not None else None
        masses, seconds = [], []
        for start, end in _spans(num_nodes, step):
            scores, attn = (None, None) if workspace is None else workspace[:, :end - start]
            scores = _target_scores(stacked_query, key_t, nodes, start, end, scores)
            attn = torch._softmax(scores, -1, False, out=attn)
            masses.append(torch.sum(attn.view(end - start, nodes, rows, cols), dim=2,
                                    out=_rows(mass, start, end)))
            if gram is not None:  # tr(A G_t A^T) for every source j of t at once
                weighted = torch.bmm(attn, gram[start:end], out=scores if eager else None)
                seconds.append(torch.sum(weighted.mul_(attn).view(end - start, nodes, -1), dim=2,
                                         out=_rows(second, start, end)))
        ctx.save_for_backward(query, key, gram)
        ctx.nodes = nodes
        mass = mass if eager else torch.cat(masses)
        second = None if gram is None else second if eager else torch.cat(seconds)
        return mass.view(-1, cols), None if second is None else second.view(-1)

    @staticmethod
    def backward(ctx, grad_mass: Optional[Tensor], grad_second: Optional[Tensor]):
        query, key, gram = ctx.saved_tensors
        nodes = ctx.nodes
        num_nodes, rows, cols = query.size(0), query.size(1), key.size(1)
        stacked_query = query.reshape(-1, nodes * rows, query.size(2))
        key_t, key_rows = key.transpose(1, 2), key.reshape(-1, key.size(2))  # [N R, X]
        eager = not torch.compiler.is_compiling()
        with_second = gram is not None and grad_second is not None
        need_query, need_key = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_gram = with_second and ctx.needs_input_grad[2]
        grad_query = torch.empty_like(stacked_query) if eager and need_query else None
        grad_key = torch.empty_like(key_rows) if eager and need_key else None
        grad_gram = torch.empty_like(gram) if eager and need_gram else None
        query_parts, key_parts, gram_parts = {}, [], []
        if grad_mass is None:
            grad_mass = query.new_zeros(num_nodes * nodes, cols)
        grad_mass = grad_mass.view(num_nodes, nodes, 1, cols)     # dm, broadcast over rows d
        symmetric = gram + gram.transpose(1, 2) if with_second else None     # d tr(AGA^T)/dA
        block = nodes * rows * cols
        step = _target_step(block)
        workspace = query.new_empty(4, min(step, num_nodes) * block) if eager else None
        for start, end in _spans(num_nodes, step):
            count = end - start
            scores, attn, work, stacked = ([None] * 4 if workspace is None else
                                           (buffer[:count * block] for buffer in workspace))
            shape = (count, nodes * rows, cols)
            scores = _target_scores(stacked_query, key_t, nodes, start, end,
                                    _view(scores, shape))
            attn = torch._softmax(scores, -1, False, out=_view(attn, shape))
            per_source = attn.view(count, nodes, rows, cols)                 # [t, j, d, c]
            grad_scores = torch.mul(per_source, grad_mass[start:end],       # A * dA, dA = dm
                                    out=_view(scores, per_source.shape))
            if with_second:
                scale = grad_second.view(num_nodes, nodes, 1)[start:end]     # q' of j -> t
                scaled = torch.mul(attn.view(count, nodes, -1), scale,
                                   out=_view(work, (count, nodes, rows * cols))).view_as(attn)
                if need_gram:  # d/dG_t = sum_j q'_{j->t} A^T A
                    gram_parts.append(torch.bmm(attn.transpose(1, 2), scaled,
                                                out=_rows(grad_gram, start, end)))
                # dA += q' A (G + G^T), in the buffer the stacked dS takes below
                weighted = torch.bmm(scaled, symmetric[start:end], out=_view(stacked, shape))
                grad_scores.addcmul_(weighted.view_as(per_source), per_source)
            grad_scores = grad_scores.view_as(attn)        # softmax: dS = A dA - A rowsum(A dA)
            grad_scores.addcmul_(attn, grad_scores.sum(dim=-1, keepdim=True), value=-1)
            for graph, first, last in _segments(start, end, nodes):
                # dS as the graph's block matrix [n P, (t, c)] of S = Q_g [K_first; ...]^T:
                # one product per operand (eagerly a strided copy into the workspace: compiled
                # code takes no strided out=)
                local, width = slice(first - start, last - start), last - first
                if eager:
                    stacked_grad = stacked[:width * block].view(nodes * rows, width, cols)
                    stacked_grad.transpose(0, 1).copy_(grad_scores[local])
                else:
                    stacked_grad = grad_scores[local].transpose(0, 1)
                stacked_grad = stacked_grad.reshape(nodes * rows, width * cols)
                if need_query:
                    keys = key_rows[first * cols:last * cols]
                    if not eager:
                        part = stacked_grad @ keys
                        query_parts[graph] = query_parts[graph] + part if graph in query_parts \
                            else part
                    elif first == graph * nodes:
                        torch.mm(stacked_grad, keys, out=grad_query[graph])
                    else:
                        grad_query[graph].addmm_(stacked_grad, keys)
                if need_key:
                    key_parts.append(torch.mm(stacked_grad.t(), stacked_query[graph],
                                              out=_rows(grad_key, first * cols, last * cols)))
        if not eager:
            grad_query = torch.stack(list(query_parts.values())) if need_query else None
            grad_key = torch.cat(key_parts) if need_key else None
            grad_gram = torch.cat(gram_parts) if need_gram else None
        return (None if grad_query is None else grad_query.view_as(query),
                None if grad_key is None else grad_key.view_as(key), grad_gram, None)


def softmax_column_moments(query: Tensor, key: Tensor, source: Tensor, target: Tensor,
                           gram: Optional[Tensor] = None, run_length: RunLength = None,
                           complete: Optional[int] = None) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Column sums and second moments of per-edge attention maps
    :math:`\mathbf{A}_e = \mathrm{softmax}(\mathbf{Q}_{s(e)} \mathbf{K}_{t(e)}^{\top})` (softmax
    over the last axis):

    .. math::
        \mathbf{m}_e = \mathbf{1}^{\top} \mathbf{A}_e, \qquad
        q_e = \mathrm{tr}(\mathbf{A}_e \mathbf{G}_{t(e)} \mathbf{A}_e^{\top}).

    The maps exist one chunk of edges at a time in the forward pass and are recomputed in the
    backward pass, so autograd keeps only the node-level inputs (no ``[E, P, R]`` tensor is
    saved). Edges grouped by target (``target == arange(E) // run_length``) share the target's
    operands as in :func:`gather_matmul`.

    On complete graphs of ``n`` nodes in the reference edge order (``complete``, see
    :func:`~pyg_mefl.data.complete_au_graph`: edge :math:`e = i n + j` of graph :math:`g` runs
    from node :math:`g n + j` to node :math:`g n + i`), the maps of a graph's :math:`n^2` edges
    are the blocks of one product of the stacked node matrices,

    .. math::
        \begin{bmatrix} \mathbf{Q}_1 \\ \vdots \\ \mathbf{Q}_n \end{bmatrix}
        \begin{bmatrix} \mathbf{K}_1^{\top} & \cdots & \mathbf{K}_n^{\top} \end{bmatrix},
        \qquad \text{block } (j, i) = \mathbf{Q}_j \mathbf{K}_i^{\top},

    with the softmax within each block's rows: the column of blocks of target :math:`i` is one
    product of the graph's stacked queries (no gather), and the gradients of the queries and
    keys are products with inner size :math:`n R` and :math:`n P` (no scatter of node rows).
    The maps exist a chunk of targets at a time, in workspace buffers the chunks reuse.

    Args:
        query (torch.Tensor): ``[Nq, P, X]`` rows of the source nodes.
        key (torch.Tensor): ``[Nk, R, X]`` rows of the target nodes.
        source, target (torch.Tensor): ``[E]`` node of each edge in ``query`` / ``key``.
        gram (torch.Tensor, optional): ``[Nk, R, R]`` per target node.
        run_length (int, optional): ``k`` with ``target == arange(E) // k`` (a promise, as in
            :func:`gather_matmul`).
        complete (int, optional): ``n`` when ``query`` and ``key`` hold complete graphs of
            ``n`` nodes each and the edges are theirs in the reference order (a promise:
            ``source`` and ``target`` are then not read).

    Returns:
        ``m`` ``[E, R]`` and ``q`` ``[E]`` (:obj:`None` without ``gram``).
    """
    if complete is not None:
        return _apply_autocast(_CompleteSoftmaxColumnMoments, query, key, gram, complete)
    return _apply_autocast(_SoftmaxColumnMoments, query, key, gram, source, target, run_length)
