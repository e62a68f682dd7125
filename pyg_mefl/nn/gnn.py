"""Residual gated graph convolution with edge update (SPEC §5)."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax

from ..utils.checks import check_edge_attr, check_edge_index, check_node_features
from .norm import NORMS, add_relu_norm, apply_norm, apply_norm_, make_norm
from .gated_messages import gated_run_messages

RESIDUALS = ("post", "pre")


class GatedGNNLayer(MessagePassing):
    r"""The residual gated graph convolution of `"Residual Gated Graph ConvNets"
    <https://arxiv.org/abs/1711.07553>`_ (eq. 11) with the edge update used by MEFL
    (`"Learning Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action Unit
    Recognition" <https://arxiv.org/abs/2205.01782>`_):

    .. math::
        \hat{\mathbf{e}}_{j \to i} &= \mathbf{e}_{j \to i} + \mathrm{ReLU}\big(
        \mathrm{Norm}_e(\mathbf{A}\mathbf{x}_i + \mathbf{B}\mathbf{x}_j +
        \mathbf{E}\mathbf{e}_{j \to i})\big) \\
        \eta_{j \to i} &= \mathrm{softmax}_{j \in \mathcal{N}(i)}\big(
        \sigma(\hat{\mathbf{e}}_{j \to i})\big) \\
        \mathbf{x}'_i &= \mathbf{U}\mathbf{x}_i + \frac{1}{|\mathcal{N}(i)|}
        \sum_{j \in \mathcal{N}(i)} \eta_{j \to i} \odot \mathbf{V}\mathbf{x}_j

    with the softmax per channel over the incoming edges of :math:`i`, followed by
    :math:`\mathbf{x}_i + \mathrm{ReLU}(\mathrm{Norm}_v(\mathbf{x}'_i))` (``residual="post"``,
    OpenGraphAU and mexca) or :math:`\mathrm{ReLU}(\mathbf{x}_i + \mathrm{Norm}_v(\mathbf{x}'_i))`
    (``residual="pre"``, ME-GraphAU). A node without incoming edges gets
    :math:`\mathbf{x}'_i = \mathbf{U}\mathbf{x}_i`.

    Where the graph is built target by target with the same in-degree :math:`k` everywhere
    (edge :math:`e` has target :math:`\lfloor e / k \rfloor`, as in the complete AU graph;
    :func:`~pyg_mefl.data.uniform_in_degree`), pass ``in_degree=k``: the softmax and the
    aggregation then run over a ``[targets, k, C]`` view without scatter. With
    ``cyclic_slots=True`` (row :math:`r` of the nodes and of the edges is in slot
    :math:`r \bmod` the number of slots, as in batches of complete AU graphs in the reference
    order) the slot norms run as torch's fused batch norm. With ``complete=True`` as well (every
    block of :math:`k` consecutive nodes is a face whose edges form the complete graph in the
    reference order, :func:`~pyg_mefl.data.complete_au_graph`: edge :math:`e` runs from node
    :math:`k \lfloor e / k^2 \rfloor + (e \bmod k)` to node :math:`\lfloor e / k \rfloor`), the
    source terms :math:`\mathbf{B}\mathbf{x}_j` and :math:`\mathbf{V}\mathbf{x}_j` are broadcasts of
    each face's ``[1, k, C]`` node block and their gradients sums over its target axis: no gather
    or scatter. Without autograd (inference), the edge update runs in place in one new
    ``[E, C]`` buffer. The layer never reads index values to choose a path, so it compiles to one
    graph.

    Args:
        in_channels (int): Node and edge feature width :math:`C`.
        norm (str, optional): ``"batch"`` (PyG :class:`BatchNorm`, per channel, for generic
            graphs), ``"slot"`` (the published per-slot :class:`SlotBatchNorm`, one statistic
            per AU node and per AU-pair edge slot) or :obj:`None`. (default: ``"batch"``)
        num_node_slots (int, optional): Node slots for ``norm="slot"`` (the number of AUs).
        num_edge_slots (int, optional): Edge slots for ``norm="slot"`` (AUs squared).
        residual (str): ``"post"`` or ``"pre"``. (default: ``"post"``)
        **kwargs (optional): Additional arguments of :class:`MessagePassing`.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, C)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`,
          ``edge_attr`` :math:`(|\mathcal{E}|, C)`, with ``norm="slot"`` also ``node_slot``
          :math:`(|\mathcal{V}|)` and ``edge_slot`` :math:`(|\mathcal{E}|)`; optionally
          ``in_degree`` (int), ``cyclic_slots`` (bool), ``complete`` (bool, with
          ``in_degree``) and ``edge_proj`` :math:`(|\mathcal{E}|, C)`:
          :math:`\mathbf{E}\mathbf{e}_{j \to i}` (``lin_e(edge_attr)``), when the caller can
          compute it more cheaply (:class:`GraphEdgeModel` with ``project``); ``lin_e`` is
          then not applied
        - **output:** ``(x, edge_attr)`` of shapes :math:`(|\mathcal{V}|, C)`,
          :math:`(|\mathcal{E}|, C)`
    """

    def __init__(self, in_channels: int, norm: Optional[str] = "batch",
                 num_node_slots: Optional[int] = None, num_edge_slots: Optional[int] = None,
                 residual: str = "post", **kwargs):
        kwargs.setdefault("aggr", "mean")
        kwargs.setdefault("node_dim", 0)
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        if residual not in RESIDUALS:
            raise ValueError(f"residual: expected one of {RESIDUALS}, got {residual!r}")
        self.in_channels = in_channels
        self.residual = residual
        self.norm_kind = norm
        self.lin_u = Linear(in_channels, in_channels, bias=False)
        self.lin_v = Linear(in_channels, in_channels, bias=False)
        self.lin_a = Linear(in_channels, in_channels, bias=False)
        self.lin_b = Linear(in_channels, in_channels, bias=False)
        self.lin_e = Linear(in_channels, in_channels, bias=False)
        self.norm_node = make_norm(norm, in_channels, num_node_slots, "num_node_slots")
        self.norm_edge = make_norm(norm, in_channels, num_edge_slots, "num_edge_slots")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_u, self.lin_v, self.lin_a, self.lin_b, self.lin_e):
            torch.nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / self.in_channels))
        for norm in (self.norm_node, self.norm_edge):
            if norm is not None:
                norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                node_slot: Optional[Tensor] = None,
                edge_slot: Optional[Tensor] = None, in_degree: Optional[int] = None,
                cyclic_slots: bool = False, complete: bool = False,
                edge_proj: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.norm_kind == "slot" and (node_slot is None or edge_slot is None):
            raise ValueError("GatedGNNLayer: norm='slot' needs node_slot and edge_slot")
        check_node_features(x, self.in_channels, self.lin_u.weight.dtype)
        check_edge_index(edge_index, x.size(0))
        check_edge_attr(edge_attr, edge_index.size(1), self.in_channels, x.dtype)
        if edge_proj is not None:
            check_edge_attr(edge_proj, edge_index.size(1), self.in_channels, edge_attr.dtype,
                            "edge_proj")
        if complete and (in_degree is None or in_degree < 1 or x.size(0) % in_degree
                         or edge_index.size(1) != x.size(0) * in_degree):
            raise ValueError(f"GatedGNNLayer: complete=True needs in_degree=k, a multiple of k "
                             f"nodes and k edges per node, got in_degree={in_degree}, "
                             f"{x.size(0)} nodes and {edge_index.size(1)} edges")
        edge_attr = self.edge_updater(edge_index, ax=self.lin_a(x), bx=self.lin_b(x),
                                      edge_attr=edge_attr, edge_proj=edge_proj,
                                      edge_slot=edge_slot, in_degree=in_degree,
                                      cyclic_slots=cyclic_slots, complete=complete)
        out = self.lin_u(x) + self.propagate(edge_index, size=(x.size(0), x.size(0)),
                                             vx=self.lin_v(x), gate_logits=edge_attr,
                                             in_degree=in_degree, complete=complete)
        out = apply_norm(self.norm_node, out, node_slot, cyclic_slots)
        out = x + torch.relu(out) if self.residual == "post" else torch.relu(x + out)
        return out, edge_attr

    def edge_update(self, ax: Tensor, bx: Tensor, edge_attr: Tensor, edge_proj: Optional[Tensor],
                    edge_slot: Optional[Tensor], edge_index_i: Tensor, edge_index_j: Tensor,
                    in_degree: Optional[int], cyclic_slots: bool, complete: bool) -> Tensor:
        channels = ax.size(-1)
        if complete:  # A x_i + B x_j of a face: its [k, 1] and [1, k] node blocks broadcast
            update = (ax.view(-1, in_degree, 1, channels) +
                      bx.view(-1, 1, in_degree, channels)).view(-1, channels)
        elif in_degree is not None:  # edges in equal runs per target: A x_i broadcast over its run
            runs = bx.index_select(0, edge_index_j).view(-1, in_degree, channels)
            update = runs.add_(ax[:runs.size(0)].unsqueeze(1)).view(-1, channels)
        else:
            update = ax.index_select(0, edge_index_i).add_(bx.index_select(0, edge_index_j))
        weight = self.lin_e.weight.t()                                    # + E e_{j->i}
        if torch.is_grad_enabled():
            # Out of place: an in-place op on a view (update, the norm's output) would make
            # autograd copy the whole [E, C] gradient through its base in the backward pass.
            update = torch.addmm(update, edge_attr, weight) if edge_proj is None else \
                update + edge_proj
            return add_relu_norm(self.norm_edge, update, edge_attr, edge_slot, cyclic_slots)
        # inference: norm, ReLU and residual in place in the new buffer (never in edge_attr), in
        # the dtypes of the out-of-place ops (autocast: the product in the buffer's dtype, the
        # residual sum in the wider of the two)
        if edge_proj is None:
            update.addmm_(edge_attr.to(update.dtype), weight.to(update.dtype))
        else:
            update.add_(edge_proj.to(update.dtype))
        update = apply_norm_(self.norm_edge, update, edge_slot, cyclic_slots).relu_()
        return update.add_(edge_attr) if update.dtype == edge_attr.dtype else update + edge_attr

    def message(self, vx: Tensor, edge_index_j: Tensor, gate_logits: Tensor, index: Tensor,
                ptr: Optional[Tensor], size_i: Optional[int],
                in_degree: Optional[int], complete: bool) -> Tensor:
        if in_degree is None:
            gate = softmax(torch.sigmoid(gate_logits), index, ptr, size_i)
            return gate * vx.index_select(0, edge_index_j)
        # Edges in equal consecutive runs per target: the softmax over the sources of a target is
        # a softmax over one axis of a [targets, in-degree, C] view, with no scatter, and the
        # gates and source values are recomputed in the backward pass instead of stored.
        return gated_run_messages(gate_logits, vx, None if complete else edge_index_j, in_degree)

    def aggregate(self, inputs: Tensor, index: Tensor, ptr: Optional[Tensor] = None,
                  dim_size: Optional[int] = None, in_degree: Optional[int] = None) -> Tensor:
        if in_degree is None or self.aggr not in ("mean", "sum", "add"):
            return super().aggregate(inputs, index, ptr, dim_size)
        runs = inputs.view(-1, in_degree, inputs.size(-1))
        runs = runs.mean(dim=1) if self.aggr == "mean" else runs.sum(dim=1)
        size = dim_size if dim_size is not None else runs.size(0)
        if runs.size(0) == size:
            return runs
        # nodes after the last target receive nothing: 0
        return torch.cat([runs, inputs.new_zeros(size - runs.size(0), inputs.size(-1))])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, norm={self.norm_kind!r}, "
                f"residual={self.residual!r})")


class GatedGNN(Module):
    r"""A stack of :class:`GatedGNNLayer` (two in the published models) that carries both the
    node and the edge features from layer to layer.

    Args:
        in_channels (int): Feature width.
        num_layers (int): Number of layers. (default: :obj:`2`)
        **kwargs (optional): Arguments of :class:`GatedGNNLayer` (``norm``, slots, ``residual``).

    Shapes:
        - **input / output:** as :class:`GatedGNNLayer` (``edge_proj``: the first layer's)
    """

    def __init__(self, in_channels: int, num_layers: int = 2, **kwargs):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers: expected at least 1, got {num_layers}")
        self.layers = ModuleList(GatedGNNLayer(in_channels, **kwargs) for _ in range(num_layers))

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                node_slot: Optional[Tensor] = None,
                edge_slot: Optional[Tensor] = None, in_degree: Optional[int] = None,
                cyclic_slots: bool = False, complete: bool = False,
                edge_proj: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        for layer in self.layers:
            x, edge_attr = layer(x, edge_index, edge_attr, node_slot, edge_slot, in_degree,
                                 cyclic_slots, complete, edge_proj)
            edge_proj = None  # the first layer's E e only
        return x, edge_attr
