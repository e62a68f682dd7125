"""Per-face centring of the tokens."""
from torch_geometric.transforms import BaseTransform

from ._tokens import face_tokens


class CenterTokens(BaseTransform):
    r"""Subtracts each face's mean token from its tokens,

    .. math::
        \mathbf{x}_d \leftarrow \mathbf{x}_d - \frac{1}{D} \sum_{d'=1}^{D} \mathbf{x}_{d'},

    which removes what all tokens of a face share (identity, lighting, a per-face offset) and
    keeps how the regions differ. Evidence that moves every token alike goes with it.

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` centred over :math:`D`
    """

    def forward(self, data):
        tokens = face_tokens(data, "CenterTokens")
        data.tokens = tokens - tokens.mean(dim=1, keepdim=True)
        return data
