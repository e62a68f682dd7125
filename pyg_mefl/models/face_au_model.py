"""MEFL behind an optional image backbone, on batches of face graphs."""
import copy
from typing import Optional

from torch import Tensor
from torch.nn import Module
from torch_geometric.data import Batch

from ..nn.mefl import MEFL, MEFLOutput


class FaceAUModel(Module):
    r"""MEFL on face graphs, behind an optional backbone that computes each face's tokens from
    its ``image`` (for :class:`~pyg_mefl.datasets.ImageListFaceDataset`); without a backbone the
    graphs carry their tokens.

    Args:
        head (MEFL): The AU head.
        backbone (torch.nn.Module, optional): Images :math:`(B, 3, H, W)` to tokens
            :math:`(B, D, C)`, e.g. :class:`~pyg_mefl.backbones.SmallCNN`.

    Shapes:
        - **input:** a ``Batch`` of face graphs
        - **output:** :class:`~pyg_mefl.MEFLOutput` (``edge_attr`` and ``edge_logits`` aligned
          with ``batch.edge_index``)
    """

    def __init__(self, head: MEFL, backbone: Optional[Module] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def tokens(self, batch: Batch) -> Tensor:
        """The faces' tokens ``[B, D, C]``: from the backbone, or as the graphs carry them."""
        if self.backbone is None:
            return batch.tokens
        if getattr(batch, "image", None) is None:
            raise ValueError("FaceAUModel: the model has a backbone but the batch has no 'image'")
        return self.backbone(batch.image)

    def forward(self, batch: Batch) -> MEFLOutput:
        if self.backbone is not None:
            batch = copy.copy(batch)
            batch.tokens = self.tokens(batch)
        return self.head(batch, return_edges=True)
