"""Cross-attention between token sets (docs/math.md §3)."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Linear, Module


class CrossAttention(Module):
    r"""Cross-attention of eq. (4) of `"Learning Multi-dimensional Edge Feature-based AU Relation
    Graph for Facial Action Unit Recognition" <https://arxiv.org/abs/2205.01782>`_:

    .. math::
        \mathrm{CA}(\mathbf{Y}, \mathbf{X}) = \mathrm{softmax}\left(
        \frac{\mathbf{Y}\mathbf{W}_q (\mathbf{X}\mathbf{W}_k)^{\top}}{\sqrt{C/2}}\right)
        \mathbf{X}\mathbf{W}_v

    with the softmax over the key tokens. The projections are exposed as ``lin_q``, ``lin_k``
    (:math:`C \to C/2`) and ``lin_v`` (:math:`C \to C`) so that graph layers can compute them
    once per node and attend once per edge.

    Args:
        in_channels (int): Token width :math:`C`.

    Shapes:
        - **input:** queries ``y`` :math:`(*, D_q, C)`, keys/values ``x`` :math:`(*, D_k, C)`
          (or :math:`(G, D_k, C)` with ``index`` :math:`(*)` picking the key set of each query set)
        - **output:** :math:`(*, D_q, C)`
    """

    def __init__(self, in_channels: int):
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"in_channels: expected at least 2, got {in_channels}")
        self.in_channels = in_channels
        self.lin_q = Linear(in_channels, in_channels // 2)
        self.lin_k = Linear(in_channels, in_channels // 2)
        self.lin_v = Linear(in_channels, in_channels)
        self.scale = (in_channels // 2) ** -0.5
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_q, self.lin_k, self.lin_v):
            lin.reset_parameters()
            torch.nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / lin.out_features))

    def forward(self, y: Tensor, x: Tensor, index: Optional[Tensor] = None) -> Tensor:
        query, key, value = self.lin_q(y), self.lin_k(x), self.lin_v(x)
        if index is not None:
            key, value = key.index_select(0, index), value.index_select(0, index)
        attn = torch.softmax(query @ key.transpose(-2, -1) * self.scale, dim=-1)
        return attn @ value

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels})"
