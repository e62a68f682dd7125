"""The token index as extra channels."""
import math
from typing import Optional

import torch
from torch_geometric.transforms import BaseTransform

from ._tokens import face_tokens


class AddTokenPosition(BaseTransform):
    r"""Appends a scaled one-hot index of each token to its channels,
    :math:`\mathbf{x}_d \leftarrow [\mathbf{x}_d \,\|\, s\,\mathbf{e}_d]`, so that a layer that
    treats the tokens as a set (MEFL's AU blocks apply one linear map to every token) can tell
    the face regions apart: the linear map gains a bias per (AU, token).

    The default scale :math:`s = \sqrt{C}` gives the code the norm a token of :math:`C`
    standardised channels has. A gradient step moves a weight on the code as far as a weight
    on a channel, so a code of norm 1 next to :math:`C` unit channels leaves the per-token bias
    about :math:`\sqrt{C}` times slower to learn than the channels' map.

    Args:
        scale (float, optional): :math:`s` (default: :math:`\sqrt{C}`).

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` :math:`(B, D, C + D)`
    """

    def __init__(self, scale: Optional[float] = None):
        if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
            raise ValueError(f"scale: expected a positive number or None, got {scale!r}")
        self.scale = scale

    def forward(self, data):
        tokens = face_tokens(data, "AddTokenPosition")
        num_faces, num_tokens, channels = tokens.shape
        scale = math.sqrt(channels) if self.scale is None else float(self.scale)
        position = scale * torch.eye(num_tokens, dtype=tokens.dtype, device=tokens.device)
        data.tokens = torch.cat([tokens, position.expand(num_faces, -1, -1)], dim=-1)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({'' if self.scale is None else self.scale})"
