"""Linear blocks: the global block before MEFL and the AU-specific blocks of the AFG (SPEC §1-2)."""
import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn import BatchNorm1d, Dropout, Linear, Module, Parameter

from .activation import relu
from .norm import SlotBatchNorm


class LinearBlock(Module):
    r"""``ReLU(BN(Linear(Dropout(X))))`` over token sets, the BN per channel with statistics
    over batch × tokens (SPEC §1). Published checkpoints use it as the global linear block
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
    r"""AU-specific feature generator (AFG, SPEC §2): one :class:`LinearBlock` per AU of the
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
        - **output:** :math:`(N_{nodes}, D, C)`, or :math:`(G, A, D, C)` with ``by_face``
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

    def forward(self, tokens: Tensor, au_id: Tensor, batch: Tensor, every_au: bool = False,
                by_face: bool = False) -> Tensor:
        r"""
        Args:
            every_au (bool): Every face holds every AU of the vocabulary in order (node
                :math:`b A + a`), as for a tokens tensor: the nodes' rows are then a transpose
                of the product's, and no index gather is needed. (default: :obj:`False`)
            by_face (bool): With ``every_au``, return the nodes as ``[G, A, D, C]`` (face, AU,
                token, channel), a strided view of the product instead of a copy in node rows.
                (default: :obj:`False`)
        """
        if by_face and not every_au:
            raise ValueError("AUFeatureBlocks: by_face=True needs every_au=True")
        num_faces, num_tokens, channels = tokens.shape
        # Every AU's block on every face in one product (the stacked [A, C, C] weight read in
        # place as the transposed operand); nodes then pick their (face, AU) rows.
        rows, weight = self.dropout(tokens).reshape(-1, channels), self.weight.view(-1, channels)
        inference = (not self.training and self.norm.track_running_stats
                     and not torch.is_grad_enabled())
        if inference:  # (X W^T + b) s + t = X W^T s + (b s + t): the bias joins the norm's fixed
            # per-(AU, channel) affine, applied in place in one pass, then the ReLU
            scale, shift = self.norm.inference_affine()
            out = torch.mm(rows, weight.t()).view(num_faces, num_tokens, self.num_aus, channels)
            torch.addcmul(torch.addcmul(shift, self.bias, scale), out, scale, out=out).relu_()
        else:
            out = torch.addmm(self.bias.view(-1), rows, weight.t())
            out = out.view(num_faces, num_tokens, self.num_aus, channels)
        if not every_au:
            out = out[batch, :, au_id]
            return out if inference else torch.relu_(self.norm(out, au_id))
        if self.training:  # rows (face, token) cycle through the AUs: fused norm (a ReLU out
            # of place: in place on the norm's view, autograd would copy the gradient around it;
            # and one whose gradient compiled code takes from its output, not a stored mask)
            out = relu(self.norm.cyclic(out.view(-1, self.num_aus, channels))).view_as(out)
        out = out.transpose(1, 2)                                           # [G, A, D, C]
        if not (inference or self.training):  # the norm module on the node rows
            out = torch.relu_(self.norm(out.reshape(-1, num_tokens, channels), au_id)).view_as(out)
        return out if by_face else out.reshape(-1, num_tokens, channels)

    def extra_repr(self) -> str:
        return f"num_aus={self.num_aus}, in_channels={self.in_channels}"
