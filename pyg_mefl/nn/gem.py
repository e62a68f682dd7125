"""The graph edge model (GEM, docs/math.md §4): multi-dimensional edge features from AU and face
tokens."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Linear
from torch_geometric.nn.conv import MessagePassing

from ..data.graph import GraphLayout
from . import fused
from .attention import CrossAttention
from .fused import gem as fused_gem
from .norm import SlotBatchNorm


class GraphEdgeModel(MessagePassing):
    r"""The graph edge model (GEM) of `"Learning Multi-dimensional Edge Feature-based AU
    Relation Graph for Facial Action Unit Recognition" <https://arxiv.org/abs/2205.01782>`_,
    over an explicit ``edge_index``.

    Each AU node :math:`i` attends to the tokens of its face (FAM), then each edge
    :math:`j \to i` attends from the source's to the target's tokens (ARM):

    .. math::
        \mathbf{F}_i &= \mathrm{CA}_{\mathrm{FAM}}(\mathbf{U}_i, \mathbf{X}_{g(i)}) \\
        \mathbf{e}_{j \to i} &= \frac{1}{D} \sum_d \mathrm{BN}_{s(j \to i)}\Big(
        \mathrm{Lin}_{\mathrm{proj}}\big(\mathrm{CA}_{\mathrm{ARM}}(\mathbf{F}_j,
        \mathbf{F}_i)\big)\Big)_d

    with :math:`\mathrm{BN}_s` the batch norm of edge slot :math:`s` (:class:`SlotBatchNorm`).
    The body below is the equation over ``edge_index``, one ``[D, C]`` relation per edge. Given the
    graph's :class:`~pyg_mefl.data.GraphLayout` (``layout``), the layer takes its fast path
    (:mod:`pyg_mefl.nn.fused`), which computes the same numbers without building an
    ``[E, D, C]`` tensor.

    Args:
        in_channels (int): Token width :math:`C`.
        num_edge_slots (int, optional): Number of edge slots (``num_aus ** 2`` for AU graphs);
            :obj:`None` disables the normalisation.
        **kwargs (optional): Additional arguments of :class:`MessagePassing`.

    Shapes:
        - **input:** face tokens ``x`` :math:`(G, D, C)`, AU tokens ``node_tokens``
          :math:`(|\mathcal{V}|, D, C)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`,
          ``batch`` :math:`(|\mathcal{V}|)` (face of each node), ``edge_slot``
          :math:`(|\mathcal{E}|)`, ``layout`` (:class:`~pyg_mefl.data.GraphLayout`, optional)
        - **output:** ``edge_attr`` :math:`(|\mathcal{E}|, C)`
    """

    def __init__(self, in_channels: int, num_edge_slots: Optional[int] = None, **kwargs):
        kwargs.setdefault("node_dim", 0)
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.fam = CrossAttention(in_channels)
        self.arm = CrossAttention(in_channels)
        self.lin_proj = Linear(in_channels, in_channels)
        self.norm = SlotBatchNorm(num_edge_slots) if num_edge_slots is not None else None
        # fast path: None attends in the faces' token basis whenever the layout makes that exact
        # and it is cheaper (fused.gem.uses_face_basis); True / False force it on / off
        self.face_basis: Optional[bool] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.fam.reset_parameters()
        self.arm.reset_parameters()
        self.lin_proj.reset_parameters()
        torch.nn.init.normal_(self.lin_proj.weight, 0.0, math.sqrt(2.0 / self.in_channels))
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, node_tokens: Tensor, edge_index: Tensor, batch: Tensor,
                edge_slot: Optional[Tensor] = None,
                layout: Optional[GraphLayout] = None) -> Tensor:
        if self.norm is not None and edge_slot is None:
            raise ValueError("GraphEdgeModel: edge_slot is required when num_edge_slots is set")
        if fused.is_enabled():
            return fused_gem.graph_edge_model(self, x, node_tokens, edge_index, batch, edge_slot,
                                              layout or GraphLayout())
        face_aware = self.fam(node_tokens, x, index=batch)                  # F_i, [V, D, C]
        return self.edge_updater(edge_index, face_aware=face_aware, edge_slot=edge_slot)

    def edge_update(self, face_aware_i: Tensor, face_aware_j: Tensor,
                    edge_slot: Optional[Tensor]) -> Tensor:
        relation = self.lin_proj(self.arm(face_aware_j, face_aware_i))    # [E, D, C]
        if self.norm is not None:
            relation = self.norm(relation, edge_slot)
        return relation.mean(dim=1)

    def __repr__(self) -> str:
        slots = None if self.norm is None else self.norm.num_slots
        return f"{self.__class__.__name__}({self.in_channels}, num_edge_slots={slots})"
