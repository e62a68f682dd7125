"""What a trained model learned and what simpler models reach: the AU relation matrix, and the
linear-probe baseline on pooled tokens."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import scatter, softmax

from ..models.face_au_model import FaceAUModel
from .loop import model_targets


@torch.no_grad()
def au_relations(model: FaceAUModel, loader, device: torch.device) -> Tuple[Tensor, str]:
    r"""The learned relation of every AU pair averaged over the faces of ``loader``, as a
    ``[V, V]`` matrix (row: target AU :math:`i`, column: source AU :math:`j`; NaN for pairs
    never seen), and its description: with an edge head, the softmax probability of class 3
    ("both AUs active"); without, the mean over channels of the last GNN layer's gate
    :math:`\eta_{j \to i}` (SPEC §5)."""
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


@torch.no_grad()
def pooled_tokens(model: FaceAUModel, loader, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Mean-pooled tokens ``[M, C]`` of the faces of ``loader`` (through the model's backbone,
    if any) and their dense labels ``[M, A]``: the inputs of :func:`linear_probe`."""
    model.eval()
    features, targets = [], []
    for batch in loader:
        batch = batch.to(device)
        features.append(model.tokens(batch).mean(dim=1).cpu())
        targets.append(model_targets(model, batch).cpu())
    return torch.cat(features), torch.cat(targets)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor,
                 weight_decay: float = 1e-3, max_iter: int = 200) -> Tensor:
    r"""Baseline: one logistic regression per AU on standardised features (e.g. mean-pooled
    tokens), fitted with L-BFGS and an L2 penalty; unknown labels (``-1``) are ignored.

    Shapes:
        - **input:** ``train_x`` :math:`(M, C)`, ``train_y`` :math:`(M, A)`, ``test_x``
          :math:`(M', C)`
        - **output:** probabilities :math:`(M', A)`
    """
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp(min=1e-6)
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    known = train_y >= 0
    y = train_y.clamp(min=0).float()
    weight = torch.zeros(x.size(1), y.size(1), requires_grad=True)
    bias = torch.zeros(y.size(1), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y, reduction="none")
        loss = loss[known].sum() / known.sum().clamp(min=1) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return torch.sigmoid(x_test @ weight + bias).detach()
