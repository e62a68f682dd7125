"""Residual gated graph convolution with edge update (docs/math.md §5)."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear, Module, ModuleList
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.utils import softmax

from ..data.graph import GraphLayout
from ..utils.checks import check_edge_attr, check_edge_index, check_node_features
from . import fused
from .fused import gnn as fused_gnn
from .norm import NORMS, apply_norm, make_norm

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

    The body below is the equation over ``edge_index``. Given the graph's
    :class:`~pyg_mefl.data.GraphLayout` (``layout``: uniform in-degree, complete AU graphs, AU
    ids in order; :func:`~pyg_mefl.data.face_graph` records it), the layer takes its fast path
    (:mod:`pyg_mefl.nn.fused`), which computes the same numbers without scatter on such graphs
    and compiles to one graph. With ``norm="slot"`` and ``layout.ids_in_order``, ``node_slot``
    must be the AU id and ``edge_slot`` the AU pair (:func:`~pyg_mefl.data.edge_slots`).

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
          ``layout`` (:class:`~pyg_mefl.data.GraphLayout`)
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
                node_slot: Optional[Tensor] = None, edge_slot: Optional[Tensor] = None,
                layout: Optional[GraphLayout] = None) -> Tuple[Tensor, Tensor]:
        layout = self.check_inputs(x, edge_index, edge_attr, node_slot, edge_slot, layout)
        if fused.is_enabled():
            return fused_gnn.gated_gnn_layer(self, x, edge_index, edge_attr, node_slot, edge_slot,
                                             layout)
        edge_attr = self.edge_updater(edge_index, ax=self.lin_a(x), bx=self.lin_b(x),
                                      edge_attr=edge_attr, edge_slot=edge_slot)
        out = self.lin_u(x) + self.propagate(edge_index, vx=self.lin_v(x), gate_logits=edge_attr,
                                             size=(x.size(0), x.size(0)))
        return self.residual_step(x, apply_norm(self.norm_node, out, node_slot)), edge_attr

    def edge_update(self, ax_i: Tensor, bx_j: Tensor, edge_attr: Tensor,
                    edge_slot: Optional[Tensor]) -> Tensor:
        update = ax_i + bx_j + self.lin_e(edge_attr)
        return edge_attr + torch.relu(apply_norm(self.norm_edge, update, edge_slot))

    def message(self, vx_j: Tensor, gate_logits: Tensor, index: Tensor, ptr: Optional[Tensor],
                size_i: Optional[int]) -> Tensor:
        return softmax(torch.sigmoid(gate_logits), index, ptr, size_i) * vx_j

    def residual_step(self, x: Tensor, out: Tensor) -> Tensor:
        """The residual connection around the normalised node update ``out``."""
        return x + torch.relu(out) if self.residual == "post" else torch.relu(x + out)

    def check_inputs(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor,
                     node_slot: Optional[Tensor], edge_slot: Optional[Tensor],
                     layout: Optional[GraphLayout]) -> GraphLayout:
        """Raise a :class:`ValueError` naming the argument that does not fit; the layout to use."""
        if self.norm_kind == "slot" and (node_slot is None or edge_slot is None):
            raise ValueError("GatedGNNLayer: norm='slot' needs node_slot and edge_slot")
        check_node_features(x, self.in_channels, self.lin_u.weight.dtype)
        check_edge_index(edge_index, x.size(0))
        check_edge_attr(edge_attr, edge_index.size(1), self.in_channels, x.dtype)
        layout = layout or GraphLayout()
        k = layout.in_degree
        if k is not None and (k < 1 or edge_index.size(1) > x.size(0) * k
                              or edge_index.size(1) % k):
            raise ValueError(f"GatedGNNLayer: layout.in_degree={k} does not fit "
                             f"{x.size(0)} nodes and {edge_index.size(1)} edges")
        if layout.complete and (k is None or k != layout.nodes_per_graph or x.size(0) % k
                                or edge_index.size(1) != x.size(0) * k):
            raise ValueError(f"GatedGNNLayer: layout.complete needs in_degree == nodes_per_graph "
                             f"== k, a multiple of k nodes and k edges per node, got "
                             f"in_degree={k}, nodes_per_graph={layout.nodes_per_graph}, "
                             f"{x.size(0)} nodes and {edge_index.size(1)} edges")
        return layout

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
        - **input / output:** as :class:`GatedGNNLayer`
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
                node_slot: Optional[Tensor] = None, edge_slot: Optional[Tensor] = None,
                layout: Optional[GraphLayout] = None) -> Tuple[Tensor, Tensor]:
        for layer in self.layers:
            x, edge_attr = layer(x, edge_index, edge_attr, node_slot, edge_slot, layout)
        return x, edge_attr
