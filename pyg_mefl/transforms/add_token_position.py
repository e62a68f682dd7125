"""The token index as extra channels."""
import torch
from torch_geometric.transforms import BaseTransform

from ._tokens import face_tokens


class AddTokenPosition(BaseTransform):
    r"""Appends the one-hot index of each token to its channels,
    :math:`\mathbf{x}_d \leftarrow [\mathbf{x}_d \,\|\, \mathbf{e}_d]`, so that a layer that
    treats the tokens as a set (MEFL's AU blocks apply one linear map to every token) can tell
    the face regions apart: the linear map gains a bias per (AU, token).

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` :math:`(B, D, C + D)`
    """

    def forward(self, data):
        tokens = face_tokens(data, "AddTokenPosition")
        num_faces, num_tokens, _ = tokens.shape
        position = torch.eye(num_tokens, dtype=tokens.dtype, device=tokens.device)
        data.tokens = torch.cat([tokens, position.expand(num_faces, -1, -1)], dim=-1)
        return data
