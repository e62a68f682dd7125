r"""The fast path of :class:`~pyg_mefl.nn.GraphEdgeModel`.

Queries, keys and projected values are computed once per node. Because every attention row sums
to one, :math:`\mathrm{Lin}_{\mathrm{proj}}(\mathbf{A}\mathbf{V}) = \mathbf{A}\,
\mathrm{Lin}_{\mathrm{proj}}(\mathbf{V})`, and because the slot norm is affine, the token mean
passes through both: an edge costs one :math:`D \times D` attention map, and the training
statistics come from the Gram matrix of each node's values; no ``[E, D, C]`` tensor is built.
When every edge stays inside one face (``layout.within_graphs``) and a face has fewer tokens
than query channels, the attention is computed in the faces' token basis, :math:`D^3` instead
of :math:`D^2 C/2` per edge (:func:`_face_basis_operands`; ``gem.face_basis`` forces either
path). The other facts of the :class:`~pyg_mefl.data.GraphLayout` (nodes per face, uniform
in-degree, complete graphs) turn gathers into grouped or block products; nothing reads index
values to decide, so the path compiles to one graph.
"""
import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from ...data.graph import GraphLayout
from ..norm import Moments
from .ops import gather_matmul, softmax_column_moments


def graph_edge_model(gem, x: Tensor, node_tokens: Tensor, edge_index: Tensor, batch: Tensor,
                     edge_slot: Optional[Tensor], layout: GraphLayout,
                     project: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""``gem(x, node_tokens, edge_index, batch, edge_slot, layout)``; ``node_tokens`` may also be
    ``[G, n, D, C]`` (node :math:`g n + a`, :func:`.au_feature_blocks` ``by_face``). With
    ``project`` :math:`\mathbf{W}` :math:`(C', C)`, the pair ``(edge_attr, edge_attr @ W.T)``,
    for a consumer whose first step is a linear map of the edges (the first gated GNN layer's
    :math:`\mathbf{E}\mathbf{e}_{j \to i}`): in the face basis, one :math:`D \times C \times C'`
    product per face and :math:`D C'` per edge instead of :math:`C C'` per edge
    (:func:`_factored_projection`)."""
    if node_tokens.dim() == 4 and node_tokens.size(1) != layout.nodes_per_graph:
        raise ValueError(f"GraphEdgeModel: node_tokens of shape {tuple(node_tokens.shape)} "
                         f"hold {node_tokens.size(1)} nodes a face, but layout.nodes_per_graph "
                         f"is {layout.nodes_per_graph}")
    source, target = edge_index if gem.flow == "source_to_target" else edge_index.flip(0)
    moments = gem.norm is not None and (gem.training or not gem.norm.track_running_stats)
    face_value = edge_face = face_run = grid_pos = None
    if uses_face_basis(gem, x, layout):
        n = layout.nodes_per_graph
        query, key, face_value = _face_basis_operands(gem, x, node_tokens, batch, n)
        value = query  # V_i = M_i P_g(i), kept factored (see _face_basis_operands)
        edge_face = batch.index_select(0, target)
        if n is not None and layout.in_degree is not None:  # face g: edges [g n k, (g+1) n k)
            face_run = n * layout.in_degree
        elif n is not None and layout.simple:  # edge j -> i: row i n + (j mod n) of the grid
            face_run, grid_pos = n * n, target * n + source % n
        statistics = _face_value_statistics(query, face_value, batch, n) if moments else None
    else:
        face_aware = gem.fam(node_tokens.reshape(-1, *node_tokens.shape[-2:]), x, index=batch)
        query = gem.arm.lin_q(face_aware)
        key = gem.arm.lin_k(face_aware) * gem.arm.scale
        value = gem.lin_proj(gem.arm.lin_v(face_aware))
        statistics = _value_statistics(value) if moments else None
    shift, row_sum, gram = statistics if statistics is not None else (None, None, None)
    complete = layout.nodes_per_graph if layout.complete else None
    return _edge_features(gem, query, key, value, face_value, edge_face, shift, row_sum, gram,
                          target, source, edge_slot, layout.in_degree, complete, face_run,
                          grid_pos, project)


def uses_face_basis(gem, x: Tensor, layout: GraphLayout) -> bool:
    """Whether to attend in the token basis of the faces (see :func:`_face_basis_operands`):
    exact whenever every edge joins two nodes of one face (a fact of the ``layout``), and
    cheaper per edge when there are fewer tokens than query channels (:math:`D^3` instead of
    :math:`D^2 C/2`)."""
    if gem.face_basis is not None:
        return gem.face_basis
    return layout.within_graphs and x.size(1) < gem.arm.lin_q.out_features

def _face_basis_operands(gem, x: Tensor, node_tokens: Tensor, batch: Tensor,
                         nodes_per_face: Optional[int]):
    r"""ARM operands expressed through the FAM attention maps :math:`\mathbf{M}_i` of the nodes.

    :math:`\mathbf{F}_i = \mathbf{M}_i \mathbf{X}^v_{g(i)}` with
    :math:`\mathbf{X}^v = \mathrm{Lin}_v^{\mathrm{FAM}}(\mathbf{X})`, and each row of
    :math:`\mathbf{M}_i` sums to one, so every affine map of the ARM passes through it:
    :math:`\mathrm{Lin}(\mathbf{F}_i) = \mathbf{M}_i \mathrm{Lin}(\mathbf{X}^v_{g(i)})`.
    For an edge inside face :math:`g` the ARM scores are then
    :math:`\mathbf{M}_j \mathbf{S}_g \mathbf{M}_i^{\top}` with the face-level
    :math:`\mathbf{S}_g = \mathrm{Lin}_q(\mathbf{X}^v_g) \mathrm{Lin}_k(\mathbf{X}^v_g)^{\top}`
    (:math:`D \times D`), and the projected values are
    :math:`\mathbf{M}_i \mathrm{Lin}_{\mathrm{proj}}(\mathrm{Lin}_v(\mathbf{X}^v_g))`.
    The values stay factored: ``edge_update`` pools the edges' weights through
    :math:`\mathbf{M}_i` first and meets :math:`\mathbf{P}_g` once per edge
    (:math:`D^2 + D C` per edge instead of :math:`D^2 C` per node), and the slot statistics
    come from face-level Gram matrices (:func:`_face_value_statistics`).
    Returns ``(query, key, face_value)``: ``query`` :math:`\mathbf{M}`, ``key``
    :math:`\mathbf{M}_i \mathbf{S}_{g(i)}^{\top}` scaled by :math:`1/\sqrt{C/2}` (both
    ``[n, D, D]``) and ``face_value`` :math:`\mathbf{P} = \mathrm{Lin}_{\mathrm{proj}}(
    \mathrm{Lin}_v(\mathbf{X}^v))` ``[G, D, C]``.
    """
    fam, arm = gem.fam, gem.arm
    # FAM scores q(U_i) k(X)^T = U_i (K W_q)^T + 1 (K b_q)^T with K = k(X): the query
    # projection folds into the face's keys, D x C per face instead of D x C/2 per node.
    face_key = fam.lin_k(x) * fam.scale                                 # [G, D, C/2]
    scores = _node_face_products(node_tokens, face_key @ fam.lin_q.weight, batch,
                                 nodes_per_face)                        # [n, D, D]
    scores = scores + (face_key @ fam.lin_q.bias).index_select(0, batch).unsqueeze(1)
    attn = torch.softmax(scores, dim=-1)                                # [n, D, D]
    face_value = fam.lin_v(x)                                           # [G, D, C]
    face_scores = arm.lin_q(face_value) @ (arm.lin_k(face_value) * arm.scale).transpose(1, 2)
    projected = gem.lin_proj(arm.lin_v(face_value))                    # [G, D, C]
    key = gather_matmul(attn, face_scores, None, batch, transpose_b=True,
                        run_length=nodes_per_face)
    return attn, key, projected

def _edge_features(gem, query: Tensor, key: Tensor, value: Tensor, face_value: Optional[Tensor],
                   edge_face: Optional[Tensor], shift: Optional[Tensor],
                   row_sum: Optional[Tensor], gram: Optional[Tensor], edge_index_i: Tensor,
                   edge_index_j: Tensor, edge_slot: Optional[Tensor], in_degree: Optional[int],
                   complete: Optional[int], face_run: Optional[int], grid_pos: Optional[Tensor],
                   project: Optional[Tensor]) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    # Attention of edge j -> i: queries from the source's tokens, keys/values from the target's.
    # (The keys carry the 1/sqrt(C/2) scale of the attention.) With face_value, the values
    # are V_i = value_i face_value_g(i) (edge_face: g of each edge's target; grid_pos: each
    # edge's row in the faces' complete graphs, of face_run rows each, see _face_products).
    num_tokens = query.size(1)
    # Column sums 1^T A_e of the attention maps and, for the statistics, tr(A_e G_i A_e^T)
    # with the node Gram matrices G_i = V~_i V~_i^T of the values less a shift c_i: with
    # A 1 = 1, sum(P_e - c_i) = 1^T A_e V~_i 1 and sum((P_e - c_i)^2) = tr(A_e G_i A_e^T)
    # for P_e = A_e V_i, so the slot statistics of P_e over tokens and channels need no
    # [E, D, C] tensor. On complete graphs (``complete`` nodes each) a graph's maps are one
    # block product; so they are on the complete grid of faces that hold half of its edges
    # or more (grid_pos), and the edges take their rows from it.
    grid_nodes = None if grid_pos is None else math.isqrt(face_run)
    if grid_nodes is not None and 2 * grid_pos.numel() >= query.size(0) * grid_nodes:
        column_mass, second = (None if t is None else t.index_select(0, grid_pos) for t in
                               softmax_column_moments(query, key, edge_index_j, edge_index_i,
                                                      gram, complete=grid_nodes))
    else:
        column_mass, second = softmax_column_moments(query, key, edge_index_j, edge_index_i,
                                                     gram, run_length=in_degree,
                                                     complete=complete)
    pooled = gather_matmul((column_mass / num_tokens).unsqueeze(1), value, None, edge_index_i,
                           run_length=in_degree)
    moments = None  # the slot norm's batch statistics; None: the running ones, or no norm
    if gram is not None:
        count = num_tokens * gem.in_channels
        first = (column_mass * row_sum.index_select(0, edge_index_i)).sum(dim=1)  # [E]
        mean = shift.index_select(0, edge_index_i) + first / count
        moments = (mean, second - first.square() / count, count)
    if face_value is not None and project is not None:
        return _factored_projection(gem, pooled, face_value, project, edge_face, face_run,
                                         grid_pos, edge_slot, moments)
    if face_value is not None:  # (m_e^T M_i / D) P_g
        pooled, = _face_products(pooled, [face_value], edge_face, face_run, grid_pos)
    pooled = pooled.squeeze(1)                                          # mean_d P_e, [E, C]
    edge_attr = pooled if gem.norm is None else gem.norm(pooled, edge_slot, moments)
    return edge_attr if project is None else (edge_attr, edge_attr @ project.t())

def _factored_projection(gem, weights: Tensor, face_value: Tensor, project: Tensor,
                         edge_face: Tensor, face_run: Optional[int],
                         grid_pos: Optional[Tensor], edge_slot: Optional[Tensor],
                         moments: Optional[Moments]) -> Tuple[Tensor, Tensor]:
    r"""``(edge_attr, edge_attr @ project.T)`` from the edges' pooling weights
    :math:`\mathbf{w}_e` (``weights`` ``[E, 1, D]``) and the faces' values
    :math:`\mathbf{P}_g` in one product per face for each: the slot norm's per-edge affine
    :math:`(a_s, b_s)` (:meth:`SlotBatchNorm.slot_affine`) goes into the weights as
    :math:`[a_s \mathbf{w}_e, b_s]` and the faces' operands are :math:`\mathbf{P}_g` and
    :math:`\mathbf{P}_g \mathbf{W}^{\top}` with the rows :math:`\mathbf{1}^{\top}` and
    :math:`(\mathbf{W}\mathbf{1})^{\top}` appended, so ``[1, D + 1] x [D + 1, C]`` and
    ``[1, D + 1] x [D + 1, C']`` products per edge give :math:`a_s \mathbf{w}_e^{\top}
    \mathbf{P}_g + b_s` and :math:`a_s \mathbf{w}_e^{\top} \mathbf{P}_g \mathbf{W}^{\top} +
    b_s \mathbf{W} \mathbf{1}` (two products rather than one of width C + C': split from one
    buffer, the edges would get strided rows and their gradients a copy into it)."""
    operands = [face_value, face_value @ project.t()]                  # [G, D, C], [G, D, C']
    if gem.norm is not None:  # (weights only carry the shape: the statistics are given)
        scale, shift = (t.index_select(0, edge_slot).view(-1, 1, 1)
                        for t in gem.norm.slot_affine(weights, edge_slot, moments))
        weights = weights * scale
        weights = torch.cat([weights, shift.to(weights.dtype)], dim=2)
        lasts = (project.new_ones(1, gem.in_channels), project.sum(dim=1).unsqueeze(0))
        operands = [torch.cat([operand, last.to(operand.dtype).expand(operand.size(0), 1, -1)],
                              dim=1) for operand, last in zip(operands, lasts)]  # D + 1 rows
    # (.to: under autocast, the dtype the norm's affine gives the plain path's edges)
    edge_attr, projected = (out.squeeze(1).to(weights.dtype) for out in _face_products(
        weights, operands, edge_face, face_run, grid_pos))
    return edge_attr, projected


def _face_products(weights: Tensor, face_values: List[Tensor], edge_face: Tensor,
                   face_run: Optional[int], grid_pos: Optional[Tensor]) -> List[Tensor]:
    r""":math:`\mathbf{w}_e^{\top} \mathbf{P}_{g(e)}` for every edge and each face-level operand
    :math:`\mathbf{P}` ``[G, K, R]`` of ``face_values`` (``weights`` ``[E, 1, K]``,
    ``edge_face`` :math:`g`), ``[E, 1, R]`` each: one product per face when the edges come in
    runs of ``face_run`` per face, or, with ``grid_pos``, when each edge has its own row of such
    runs (the rows of the faces' complete graphs, see :class:`~pyg_mefl.data.GraphLayout`'s
    ``simple``): the weights are spread onto the grid once and the products gathered back from
    it. Otherwise each edge gathers its face's :math:`K \times R` operand."""
    if grid_pos is None:
        return [gather_matmul(weights, value, None, edge_face, run_length=face_run)
                for value in face_values]
    grid = weights.new_zeros((face_values[0].size(0) * face_run,) + weights.shape[1:])
    grid = grid.index_copy(0, grid_pos, weights)
    return [gather_matmul(grid, value, run_length=face_run).index_select(0, grid_pos)
            for value in face_values]


def _node_face_products(node_tokens: Tensor, face_rows: Tensor, batch: Tensor,
                        nodes_per_face: Optional[int]) -> Tensor:
    r""":math:`\mathbf{U}_i \mathbf{B}_{g(i)}^{\top}` for every node (``face_rows``
    :math:`\mathbf{B}` ``[G, R, C]``), ``[n, D, R]``. Node tokens ``[G, n, D, C]`` stored
    token-major (``[G, D, n, C]``, as :class:`AUFeatureBlocks` gives them ``by_face``) take one
    product per face; node-major ones or ``[n, D, C]`` rows a grouped product per node."""
    if node_tokens.dim() == 3:
        return gather_matmul(node_tokens, face_rows, None, batch, transpose_b=True,
                             run_length=nodes_per_face)
    faces, nodes, tokens, channels = node_tokens.shape
    if node_tokens.transpose(1, 2).is_contiguous():  # rows (d, i) of each face
        scores = torch.bmm(node_tokens.transpose(1, 2).reshape(faces, -1, channels),
                           face_rows.transpose(1, 2))                       # [G, D n, R]
        return scores.view(faces, tokens, nodes, -1).transpose(1, 2).reshape(faces * nodes,
                                                                              tokens, -1)
    return gather_matmul(node_tokens.reshape(-1, tokens, channels), face_rows, None, batch,
                         transpose_b=True, run_length=nodes)


def _value_statistics(value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Shift :math:`c_i` (the node's mean value), row sums :math:`\tilde{\mathbf{V}}_i
    \mathbf{1}` and Gram matrices :math:`\tilde{\mathbf{V}}_i \tilde{\mathbf{V}}_i^{\top}` of
    the centred values :math:`\tilde{\mathbf{V}}_i = \mathbf{V}_i - c_i` (``value``
    ``[n, D, C]``); centring per node keeps the subtraction of the moments well conditioned."""
    shift = value.mean(dim=(1, 2))                                          # [n]
    centred = value - shift.view(-1, 1, 1)
    return shift, centred.sum(dim=2), centred @ centred.transpose(1, 2)


def _face_value_statistics(mixing: Tensor, face_value: Tensor, batch: Tensor,
                           nodes_per_face: Optional[int]) -> Tuple[Tensor, Tensor, Tensor]:
    r""":func:`_value_statistics` for factored values :math:`\mathbf{V}_i = \mathbf{M}_i
    \mathbf{P}_{g(i)}` (``mixing`` :math:`\mathbf{M}` ``[n, D, D]`` with rows summing to one,
    ``face_value`` :math:`\mathbf{P}` ``[G, D, C]``), shifted by the face's mean value
    :math:`\bar{p}_g` instead of the node's: since :math:`\mathbf{M}_i \mathbf{1} = \mathbf{1}`,
    :math:`\mathbf{V}_i - \bar{p}_g = \mathbf{M}_i \tilde{\mathbf{P}}_g` with
    :math:`\tilde{\mathbf{P}}_g = \mathbf{P}_g - \bar{p}_g`, so the row sums are
    :math:`\mathbf{M}_i \tilde{\mathbf{P}}_g \mathbf{1}` and the Gram matrices
    :math:`\mathbf{M}_i (\tilde{\mathbf{P}}_g \tilde{\mathbf{P}}_g^{\top})
    \mathbf{M}_i^{\top}`: :math:`D^3` per node instead of :math:`D^2 C`. The node's values are
    convex combinations of its face's rows, so the face mean centres them as well as their own."""
    face_mean = face_value.mean(dim=(1, 2))                                 # [G]
    centred = face_value - face_mean.view(-1, 1, 1)
    face_gram = centred @ centred.transpose(1, 2)                           # [G, D, D]
    row_sum = gather_matmul(mixing, centred.sum(dim=2, keepdim=True), None, batch,
                            run_length=nodes_per_face).squeeze(2)           # [n, D]
    gram = gather_matmul(mixing, face_gram, None, batch, run_length=nodes_per_face)
    return face_mean.index_select(0, batch), row_sum, gram @ mixing.transpose(1, 2)
