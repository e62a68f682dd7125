r"""What simpler models reach on the same tokens: a ridge probe on the concatenated tokens and a
token-wise MLP with mean pooling, both with per-AU thresholds tuned on the validation split."""
from typing import NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module, Sequential, ReLU

from ..models.face_au_model import FaceAUModel
from .loop import model_targets
from .thresholds import calibrated_metrics


class ProbeResult(NamedTuple):
    """A baseline's test scores ``[M', A]``, its per-AU thresholds ``[A]`` (tuned on
    validation) and its validation mean F1 at those thresholds."""
    scores: Tensor
    thresholds: Tensor
    val_mean_f1: float


@torch.no_grad()
def face_tokens(model: FaceAUModel, loader, device: torch.device) -> Tuple[Tensor, Tensor]:
    """The tokens ``[M, D, C]`` of the faces of ``loader`` (through the model's backbone, if
    any) and their dense labels ``[M, A]``, on the CPU: the inputs of the probes."""
    model.eval()
    tokens, targets = [], []
    for batch in loader:
        batch = batch.to(device)
        tokens.append(model.tokens(batch).float().cpu())
        targets.append(model_targets(model, batch).cpu())
    return torch.cat(tokens), torch.cat(targets)


def ridge_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, test_x: Tensor,
                alphas: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> ProbeResult:
    r"""Ridge regression of the labels on the features (e.g. concatenated tokens
    ``tokens.flatten(1)``), standardised on the training split:

    .. math::
        \mathbf{W} = (\mathbf{X}^{\top}\mathbf{X} + \alpha M \mathbf{I})^{-1}
        \mathbf{X}^{\top}\mathbf{Y},

    solved for every :math:`\alpha` in ``alphas`` (relative to the number of training faces
    :math:`M`) from one eigendecomposition (of :math:`\mathbf{X}\mathbf{X}^{\top}` where there
    are more features than faces). Unknown labels (``-1``) take their AU's training rate. The
    :math:`\alpha` and the per-AU thresholds that maximise the validation mean F1 win.

    Shapes:
        - **input:** ``train_x`` :math:`(M, F)`, ``train_y`` :math:`(M, A)`, ``val_x``
          :math:`(M_v, F)`, ``val_y`` :math:`(M_v, A)`, ``test_x`` :math:`(M_t, F)`
        - **output:** :class:`ProbeResult` with scores :math:`(M_t, A)`
    """
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).clamp(min=1e-6)
    x, x_val, x_test = ((part.double() - mean) / std for part in (train_x, val_x, test_x))
    known = train_y >= 0
    rate = (train_y.clamp(min=0) * known).sum(0) / known.sum(0).clamp(min=1)
    y = torch.where(known, train_y.double(), rate.double())
    bias = y.mean(dim=0)
    y = y - bias
    num_faces = x.size(0)
    primal = x.size(1) <= num_faces
    eigenvalues, vectors = torch.linalg.eigh(x.t() @ x if primal else x @ x.t())
    projected = vectors.t() @ (x.t() @ y if primal else y)
    best = None
    for alpha in alphas:
        inverse = vectors @ (projected / (eigenvalues.clamp(min=0) + alpha * num_faces)[:, None])
        weight = inverse if primal else x.t() @ inverse
        thresholds, metrics = calibrated_metrics((x_val @ weight + bias).float(), val_y)
        score = metrics["mean_f1"]
        if best is None or score > best[0]:
            best = score, weight, thresholds
    score, weight, thresholds = best
    return ProbeResult((x_test @ weight + bias).float(), thresholds, score)


class TokenMLP(Module):
    r"""A token-wise MLP with mean pooling: every token through the same two-layer MLP, the
    mean over the face's tokens, and a linear map to AU logits,

    .. math::
        \mathbf{z} = \mathbf{W}_o\, \mathrm{mean}_d\,
        \mathrm{ReLU}(\mathbf{W}_2\, \mathrm{ReLU}(\mathbf{W}_1 \mathbf{x}_d)).

    Args:
        in_channels (int): Token width :math:`C`.
        num_aus (int): Number of AUs :math:`A`.
        hidden_channels (int): Width of the MLP. (default: :obj:`64`)

    Shapes:
        - **input:** tokens :math:`(B, D, C)`
        - **output:** logits :math:`(B, A)`
    """

    def __init__(self, in_channels: int, num_aus: int, hidden_channels: int = 64):
        super().__init__()
        self.mlp = Sequential(Linear(in_channels, hidden_channels), ReLU(),
                              Linear(hidden_channels, hidden_channels), ReLU())
        self.out = Linear(hidden_channels, num_aus)

    def reset_parameters(self):
        for layer in (self.mlp[0], self.mlp[2], self.out):
            layer.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(self.mlp(tokens).mean(dim=1))


def token_mlp_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor,
                    test_x: Tensor, hidden_channels: int = 64, epochs: int = 40,
                    batch_size: int = 64, lr: float = 1e-3, patience: int = 8,
                    seed: int = 0) -> ProbeResult:
    r"""A :class:`TokenMLP` on tokens standardised per channel (training statistics), trained
    with AdamW on the class-balanced binary cross-entropy of the known labels, keeping the
    epoch (and per-AU thresholds) of the best validation mean F1; stops after ``patience``
    epochs without improvement.

    Shapes:
        - **input:** ``train_x`` :math:`(M, D, C)`, ``train_y`` :math:`(M, A)`, ``val_x``,
          ``val_y``, ``test_x`` likewise
        - **output:** :class:`ProbeResult` with scores :math:`(M_t, A)`
    """
    generator = torch.Generator().manual_seed(seed)
    mean = train_x.mean(dim=(0, 1))
    std = train_x.std(dim=(0, 1)).clamp(min=1e-6)
    x, x_val, x_test = ((part.float() - mean) / std for part in (train_x, val_x, test_x))
    known = train_y >= 0
    positives = ((train_y == 1) & known).sum(0).float()
    pos_weight = ((known.sum(0) - positives) / positives.clamp(min=1)).clamp(min=1.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TokenMLP(x.size(-1), train_y.size(1), hidden_channels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    best, waited = None, 0
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(x.size(0), generator=generator).split(batch_size):
            logits, target = model(x[index]), train_y[index]
            loss = F.binary_cross_entropy_with_logits(
                logits, target.clamp(min=0).float(), pos_weight=pos_weight, reduction="none")
            loss = (loss * (target >= 0)).sum() / (target >= 0).sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            thresholds, metrics = calibrated_metrics(torch.sigmoid(model(x_val)), val_y)
            if best is None or metrics["mean_f1"] > best.val_mean_f1:
                best = ProbeResult(torch.sigmoid(model(x_test)), thresholds, metrics["mean_f1"])
                waited = 0
            else:
                waited += 1
        if waited >= patience:
            break
    return best
