r"""The fast path of :class:`~pyg_mefl.nn.GatedGNNLayer`.

Chosen from the graph's :class:`~pyg_mefl.data.GraphLayout`:

- ``in_degree`` :math:`k` (edge :math:`e` has target :math:`\lfloor e / k \rfloor`): the softmax
  and the aggregation run over a ``[targets, k, C]`` view without scatter, and the gates are
  recomputed in the backward pass instead of stored (:func:`.gated_run_messages`);
- ``complete`` as well (every block of :math:`k` nodes is a face whose edges form the complete
  graph in the reference order): the source terms :math:`\mathbf{B}\mathbf{x}_j` and
  :math:`\mathbf{V}\mathbf{x}_j` are broadcasts of each face's ``[1, k, C]`` node block and their
  gradients sums over its target axis, with no gather or scatter;
- ``ids_in_order`` with slot norms of :math:`n` node and :math:`n^2` edge slots (rows cycle
  through the slots): the norms run as torch's fused batch norm, and in training the edge
  update's norm, ReLU and residual as one autograd function (:func:`.add_relu_norm`).

Without autograd (inference) the edge update runs in place in one new ``[E, C]`` buffer.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import softmax

from ...data.graph import GraphLayout
from ..norm import SlotBatchNorm
from .gated_messages import gated_run_messages
from .norm import add_relu_norm, norm_rows, norm_rows_


def cyclic_slots(layer, layout: GraphLayout) -> bool:
    """Whether the node and edge rows of ``layout`` cycle through the slots of ``layer``'s slot
    norms: complete graphs of :math:`n` nodes with the ids in order, :math:`n` node slots and
    :math:`n^2` edge slots (node slot = AU id, edge slot as :func:`~pyg_mefl.data.edge_slots`)."""
    n = layout.nodes_per_graph
    return (layout.complete and layout.ids_in_order and n is not None
            and isinstance(layer.norm_node, SlotBatchNorm) and layer.norm_node.num_slots == n
            and isinstance(layer.norm_edge, SlotBatchNorm) and layer.norm_edge.num_slots == n * n)


def gated_gnn_layer(layer, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                    node_slot: Optional[Tensor], edge_slot: Optional[Tensor],
                    layout: GraphLayout, edge_proj: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor]:
    """``layer(x, edge_index, edge_attr, node_slot, edge_slot, layout)``; ``edge_proj``, if given,
    is :math:`\\mathbf{E}\\mathbf{e}_{j \\to i}` (``layer.lin_e(edge_attr)``) computed more
    cheaply by the caller (the GEM's factored projection)."""
    in_degree = layout.in_degree
    complete = layout.complete and in_degree is not None and in_degree == layout.nodes_per_graph
    cyclic = cyclic_slots(layer, layout)
    source, target = edge_index if layer.flow == "source_to_target" else edge_index.flip(0)
    edge_attr = _edge_update(layer, layer.lin_a(x), layer.lin_b(x), edge_attr, edge_proj,
                             edge_slot, source, target, in_degree, cyclic, complete)
    vx = layer.lin_v(x)
    if in_degree is None:
        gate = softmax(torch.sigmoid(edge_attr), target, None, x.size(0))
        aggregated = layer.aggr_module(gate * vx.index_select(0, source), target,
                                       dim_size=x.size(0))
    else:
        messages = gated_run_messages(edge_attr, vx, None if complete else source, in_degree)
        aggregated = _aggregate_runs(layer, messages, target, x.size(0), in_degree)
    out = norm_rows(layer.norm_node, layer.lin_u(x) + aggregated, node_slot, cyclic)
    return layer.residual_step(x, out), edge_attr


def _edge_update(layer, ax: Tensor, bx: Tensor, edge_attr: Tensor, edge_proj: Optional[Tensor],
                 edge_slot: Optional[Tensor], source: Tensor, target: Tensor,
                 in_degree: Optional[int], cyclic: bool, complete: bool) -> Tensor:
    channels = ax.size(-1)
    if complete:  # A x_i + B x_j of a face: its [k, 1] and [1, k] node blocks broadcast
        update = (ax.view(-1, in_degree, 1, channels) +
                  bx.view(-1, 1, in_degree, channels)).view(-1, channels)
    elif in_degree is not None:  # edges in equal runs per target: A x_i broadcast over its run
        runs = bx.index_select(0, source).view(-1, in_degree, channels)
        update = runs.add_(ax[:runs.size(0)].unsqueeze(1)).view(-1, channels)
    else:
        update = ax.index_select(0, target).add_(bx.index_select(0, source))
    weight = layer.lin_e.weight.t()                                       # + E e_{j->i}
    if torch.is_grad_enabled():
        # Out of place: an in-place op on a view (update, the norm's output) would make
        # autograd copy the whole [E, C] gradient through its base in the backward pass.
        update = torch.addmm(update, edge_attr, weight) if edge_proj is None else \
            update + edge_proj
        return add_relu_norm(layer.norm_edge, update, edge_attr, edge_slot, cyclic)
    # inference: norm, ReLU and residual in place in the new buffer (never in edge_attr), in
    # the dtypes of the out-of-place ops (autocast: the product in the buffer's dtype, the
    # residual sum in the wider of the two)
    if edge_proj is None:
        update.addmm_(edge_attr.to(update.dtype), weight.to(update.dtype))
    else:
        update.add_(edge_proj.to(update.dtype))
    update = norm_rows_(layer.norm_edge, update, edge_slot, cyclic).relu_()
    return update.add_(edge_attr) if update.dtype == edge_attr.dtype else update + edge_attr


def _aggregate_runs(layer, messages: Tensor, target: Tensor, num_nodes: int,
                    in_degree: int) -> Tensor:
    """The layer's aggregation of messages in runs of ``in_degree`` per target: a mean or sum over
    the run axis (nodes after the last target receive nothing: 0), other aggregations by index."""
    if layer.aggr not in ("mean", "sum", "add"):
        return layer.aggr_module(messages, target, dim_size=num_nodes)
    runs = messages.view(-1, in_degree, messages.size(-1))
    runs = runs.mean(dim=1) if layer.aggr == "mean" else runs.sum(dim=1)
    if runs.size(0) == num_nodes:
        return runs
    return torch.cat([runs, messages.new_zeros(num_nodes - runs.size(0), messages.size(-1))])
