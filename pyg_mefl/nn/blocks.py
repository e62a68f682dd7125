"""Linear blocks: the global block before MEFL and the AU-specific blocks of the AFG
(docs/math.md §1-2)."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import BatchNorm1d, Dropout, Linear, Module, Parameter

from ..data.graph import GraphLayout
from . import fused
from .fused import blocks as fused_blocks
from .norm import SlotBatchNorm


class LinearBlock(Module):
    r"""``ReLU(BN(Linear(Dropout(X))))`` over token sets, the BN per channel with statistics
    over batch × tokens (docs/math.md §1). Published checkpoints use it as the global linear block
    between the backbone and MEFL (``global_linear`` / ``linear_global``).

    Args:
        in_channels (int): Input width.
        out_channels (int, optional): Output width (default: ``in_channels``).
        dropout (float): Dropout before the linear map. (default: :obj:`0.0`)

    Shapes:
        - **input:** :math:`(B, D, C_{in})`
        - **output:** :math:`(B, D, C_{out})`
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or in_channels
        self.dropout = Dropout(dropout)
        self.lin = Linear(in_channels, out_channels)
        self.norm = BatchNorm1d(out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        torch.nn.init.normal_(self.lin.weight, 0.0, math.sqrt(2.0 / self.lin.out_features))
        self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        x = self.lin(self.dropout(x))
        return torch.relu(self.norm(x.transpose(1, 2)).transpose(1, 2))


class AUFeatureBlocks(Module):
    r"""AU-specific feature generator (AFG, docs/math.md §2): one :class:`LinearBlock` per AU of the
    vocabulary, stored as stacked weights so that all of them run as one matrix product.

    .. math::
        \mathbf{U}_i = \mathrm{ReLU}\big(\mathrm{BN}_{a(i)}(\mathbf{X}_{g(i)}
        \mathbf{W}_{a(i)}^{\top} + \mathbf{b}_{a(i)})\big)

    for node :math:`i` of AU :math:`a(i)` in face :math:`g(i)`; the BN of each AU keeps its own
    per-channel statistics over the faces and tokens of that AU in the batch.

    Args:
        num_aus (int): Size of the AU vocabulary.
        in_channels (int): Token width.
        dropout (float): Dropout before the linear maps. (default: :obj:`0.0`)

    Shapes:
        - **input:** tokens :math:`(G, D, C)`, ``au_id`` :math:`(N_{nodes})`,
          ``batch`` :math:`(N_{nodes})`
          (optionally ``layout``, :class:`~pyg_mefl.data.GraphLayout`: with ``ids_in_order``
          the AU blocks of every face run as one product, :mod:`pyg_mefl.nn.fused`)
        - **output:** :math:`(N_{nodes}, D, C)`
    """

    def __init__(self, num_aus: int, in_channels: int, dropout: float = 0.0):
        super().__init__()
        self.num_aus = num_aus
        self.in_channels = in_channels
        self.dropout = Dropout(dropout)
        self.weight = Parameter(torch.empty(num_aus, in_channels, in_channels))
        self.bias = Parameter(torch.empty(num_aus, in_channels))
        self.norm = SlotBatchNorm(num_aus, in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels)  # torch.nn.Linear's bias init
        torch.nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / self.in_channels))
        torch.nn.init.uniform_(self.bias, -bound, bound)
        self.norm.reset_parameters()

    def forward(self, tokens: Tensor, au_id: Tensor, batch: Tensor,
                layout: Optional[GraphLayout] = None) -> Tensor:
        if fused.is_enabled():
            every_au = layout is not None and layout.ids_in_order and \
                layout.nodes_per_graph == self.num_aus
            return fused_blocks.au_feature_blocks(self, tokens, au_id, batch, every_au)
        face_tokens = self.dropout(tokens).index_select(0, batch)               # X_g(i)
        weight, bias = self.weight.index_select(0, au_id), self.bias.index_select(0, au_id)
        out = torch.baddbmm(bias.unsqueeze(1), face_tokens, weight.transpose(1, 2))
        return torch.relu(self.norm(out, au_id))

    def extra_repr(self) -> str:
        return f"num_aus={self.num_aus}, in_channels={self.in_channels}"
