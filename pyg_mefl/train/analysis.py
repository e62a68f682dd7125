"""What a trained model learned: the AU relation matrix. (What simpler models reach on the same
tokens is in :mod:`~pyg_mefl.train.baselines`.)"""
from typing import Tuple

import torch
from torch import Tensor
from torch_geometric.utils import scatter, softmax

from ..models.face_au_model import FaceAUModel
from ..nn.mefl import MEFL


@torch.no_grad()
def au_relations(model: FaceAUModel, loader, device: torch.device) -> Tuple[Tensor, str]:
    r"""The learned relation of every AU pair averaged over the faces of ``loader``, as a
    ``[V, V]`` matrix (row: target AU :math:`i`, column: source AU :math:`j`; NaN for pairs
    never seen), and its description: with an edge head, the softmax probability of class 3
    ("both AUs active"); without, the mean over channels of the last GNN layer's gate
    :math:`\eta_{j \to i}` (docs/math.md §5)."""
    if not isinstance(model.head, MEFL):
        raise TypeError(f"au_relations: expected a model with a MEFL head (its edge features "
                        f"hold the relations), got a {type(model.head).__name__} head")
    model.eval()
    num_aus = model.head.num_main_aus
    total = torch.zeros(num_aus * num_aus, dtype=torch.float64)
    count = torch.zeros_like(total)
    for batch in loader:
        batch = batch.to(device)
        out = model(batch)
        if out.edge_logits is not None:
            value = out.edge_logits.softmax(dim=-1)[:, 3]
        else:
            value = softmax(torch.sigmoid(out.edge_attr), batch.edge_index[1]).mean(dim=-1)
        slot = (batch.au_id[batch.edge_index[1]] * num_aus + batch.au_id[batch.edge_index[0]])
        total += scatter(value.double(), slot, 0, num_aus * num_aus, "sum").cpu()
        count += scatter(torch.ones_like(value, dtype=torch.float64), slot, 0,
                         num_aus * num_aus, "sum").cpu()
    matrix = (total / count).float().view(num_aus, num_aus)
    what = ("edge head: P(both AUs active)" if model.head.edge_head is not None
            else "mean gate of the last GNN layer")
    return matrix, what
