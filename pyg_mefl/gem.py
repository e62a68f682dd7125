"""The graph edge model (GEM, SPEC §4): multi-dimensional edge features from AU and face tokens."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Linear
from torch_geometric.nn.conv import MessagePassing

from .attention import CrossAttention
from .norm import SlotBatchNorm
from .ops import gather_matmul


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
    Queries, keys and projected values are computed once per node. Because every attention row
    sums to one, :math:`\mathrm{Lin}_{\mathrm{proj}}(\mathbf{A}\mathbf{V}) = \mathbf{A}\,
    \mathrm{Lin}_{\mathrm{proj}}(\mathbf{V})`, and because the slot norm is affine, the token mean
    passes through both: an edge costs one :math:`D \times D` attention map, and the training
    statistics come from the Gram matrix of each node's values. No ``[E, D, C]`` tensor is built.

    Args:
        in_channels (int): Token width :math:`C`.
        num_edge_slots (int, optional): Number of edge slots (``num_aus ** 2`` for AU graphs);
            :obj:`None` disables the normalisation.
        **kwargs (optional): Additional arguments of :class:`MessagePassing`.

    Shapes:
        - **input:** face tokens ``x`` :math:`(G, D, C)`, AU tokens ``node_tokens``
          :math:`(|\mathcal{V}|, D, C)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`, ``batch``
          :math:`(|\mathcal{V}|)` (face of each node), ``edge_slot`` :math:`(|\mathcal{E}|)`
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
                edge_slot: Optional[Tensor] = None) -> Tensor:
        if self.norm is not None and edge_slot is None:
            raise ValueError("GraphEdgeModel: edge_slot is required when num_edge_slots is set")
        face_aware = self.fam(node_tokens, x, index=batch)
        query = self.arm.lin_q(face_aware)
        key = self.arm.lin_k(face_aware)
        value = self.lin_proj(self.arm.lin_v(face_aware))
        return self.edge_updater(edge_index, query=query, key=key, value=value, edge_slot=edge_slot)

    def edge_update(self, query: Tensor, key: Tensor, value: Tensor, edge_index_i: Tensor,
                    edge_index_j: Tensor, edge_slot: Optional[Tensor]) -> Tensor:
        # Attention of edge j -> i: queries from the source's tokens, keys/values from the target's.
        attn = gather_matmul(query, key, edge_index_j, edge_index_i, transpose_b=True)
        attn = torch.softmax(attn * self.arm.scale, dim=-1)                 # [E, D, D]
        column_mass = attn.sum(dim=1)                                       # [E, D]
        num_tokens = attn.size(1)
        pooled = gather_matmul(column_mass.unsqueeze(1), value, None, edge_index_i)
        pooled = pooled.squeeze(1) / num_tokens                             # mean_d P_e, [E, C]
        if self.norm is None:
            return pooled
        moments = None
        if self.training or not self.norm.track_running_stats:
            moments = self._edge_moments(attn, column_mass, value, edge_index_i)
        return self.norm(pooled, edge_slot, moments=moments)

    @staticmethod
    def _edge_moments(attn: Tensor, column_mass: Tensor, value: Tensor, target: Tensor):
        r"""Mean and sum of squared deviations of each ``P_e = A_e V_i`` over tokens and channels.

        With the node-centred values :math:`\tilde{\mathbf{V}} = \mathbf{V} - c` and
        :math:`\mathbf{A}\mathbf{1} = \mathbf{1}`: :math:`\sum (\mathbf{P}_e - c) =
        \mathbf{1}^{\top}\mathbf{A}_e \tilde{\mathbf{V}}\mathbf{1}` and :math:`\sum (\mathbf{P}_e
        - c)^2 = \mathrm{tr}(\mathbf{A}_e \tilde{\mathbf{V}}\tilde{\mathbf{V}}^{\top}
        \mathbf{A}_e^{\top})`; centring per node keeps the subtraction below well conditioned.
        """
        count = value.size(1) * value.size(2)
        shift = value.mean(dim=(1, 2), keepdim=True)                        # [n, 1, 1]
        centred = value - shift
        gram = centred @ centred.transpose(1, 2)                            # [n, D, D]
        row_sum = centred.sum(dim=2)                                        # [n, D]
        first = (column_mass * row_sum.index_select(0, target)).sum(dim=1)  # [E]
        second = (gather_matmul(attn, gram, None, target) * attn).sum(dim=(1, 2))
        mean = shift.view(-1).index_select(0, target) + first / count
        m2 = second - first.square() / count
        return mean, m2, count

    def __repr__(self) -> str:
        slots = None if self.norm is None else self.norm.num_slots
        return f"{self.__class__.__name__}({self.in_channels}, num_edge_slots={slots})"
