"""Per-face standardisation of the tokens."""
from torch_geometric.transforms import BaseTransform

from ._tokens import face_tokens


class StandardizeTokens(BaseTransform):
    r"""Centres each face's tokens (:class:`CenterTokens`) and divides them by their root mean
    square over the face's tokens and channels,

    .. math::
        \mathbf{x}_d \leftarrow \frac{\mathbf{x}_d - \bar{\mathbf{x}}}
        {\sqrt{\frac{1}{DC} \sum_{d', c} (x_{d'c} - \bar{x}_c)^2 + \epsilon}},

    which also removes a per-face contrast (gain). A face whose tokens are all equal stays
    zero.

    Args:
        eps (float): Added to the mean square. (default: :obj:`1e-6`)

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` standardised per face
    """

    def __init__(self, eps: float = 1e-6):
        self.eps = eps

    def forward(self, data):
        tokens = face_tokens(data, "StandardizeTokens")
        centred = tokens - tokens.mean(dim=1, keepdim=True)
        scale = (centred.square().mean(dim=(1, 2), keepdim=True) + self.eps).sqrt()
        data.tokens = centred / scale
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(eps={self.eps})"
