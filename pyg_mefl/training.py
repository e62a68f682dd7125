"""Training MEFL on face graphs: the model wrapper, the epoch loop with atomic, exactly
resumable checkpoints, evaluation, the learned AU relations and the linear-probe baseline."""
import copy
import math
import os
import random
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module
from torch_geometric.data import Batch
from torch_geometric.utils import scatter, softmax
from tqdm import tqdm

from .losses import MEFLLoss
from .metrics import AUMetrics
from .model import MEFL, MEFLOutput

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# What a training checkpoint holds (checked on --resume).
CHECKPOINT_ENTRIES = ("model", "optimizer", "epoch", "rng", "best_val_f1", "history")


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


def au_targets(batch: Batch, num_main_aus: int, num_sub_aus: int = 0) -> Tensor:
    """The labels of a batch of face graphs as the dense ``[B, num_main_aus + num_sub_aus]``
    matrix that matches MEFL's output: node labels ``y`` placed at their AU ids, then the sub-AU
    labels ``y_sub``; ``-1`` (unknown) for the AUs a graph lacks."""
    target = torch.full((batch.num_graphs, num_main_aus), -1, dtype=torch.long,
                        device=batch.y.device)
    target[batch.batch, batch.au_id] = batch.y
    if num_sub_aus == 0:
        return target
    if batch.y_sub.size(1) != num_sub_aus:
        raise ValueError(f"batch.y_sub: expected {num_sub_aus} sub-AU labels per face, got "
                         f"{batch.y_sub.size(1)}")
    return torch.cat([target, batch.y_sub], dim=1)


def _targets(model: FaceAUModel, batch: Batch) -> Tensor:
    return au_targets(batch, model.head.num_main_aus, model.head.num_sub_aus)


def train_epoch(model: FaceAUModel, loader, optimizer: torch.optim.Optimizer, loss_fn: MEFLLoss,
                device: torch.device, desc: str = "train") -> float:
    """One pass over ``loader`` with a progress bar showing the running loss; returns the mean
    loss per batch."""
    model.train()
    total, steps = 0.0, 0
    with tqdm(loader, desc=desc, leave=False, dynamic_ncols=True) as bar:
        for batch in bar:
            batch = batch.to(device)
            out = model(batch)
            loss = loss_fn(out.probs, _targets(model, batch), out.edge_logits,
                           getattr(batch, "edge_y", None))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: FaceAUModel, loader, device: torch.device) -> Dict[str, object]:
    """:class:`~pyg_mefl.metrics.AUMetrics` of the model (in eval mode) over ``loader``."""
    model.eval()
    metrics = AUMetrics(len(model.head.au_names))
    for batch in loader:
        batch = batch.to(device)
        metrics.update(model(batch).probs, _targets(model, batch))
    return metrics.compute()


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
        targets.append(_targets(model, batch).cpu())
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


def save_checkpoint(state: dict, path: str) -> None:
    """``torch.save`` to ``path`` atomically: to a temporary file in the same folder, then
    :func:`os.replace`, so that an interrupted run never leaves a truncated checkpoint."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def rng_state(generator: Optional[torch.Generator] = None) -> dict:
    """The states of torch's, numpy's and Python's global generators and of ``generator``
    (e.g. the ``DataLoader``'s shuffling generator), as tensors and plain Python values, so
    that a checkpoint holding them loads with ``weights_only=True``."""
    kind, keys, position, has_gauss, gauss = numpy.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss),
            "python": random.getstate(),
            "loader": None if generator is None else generator.get_state()}


def set_rng_state(state: dict, generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    numpy.random.set_state((kind, keys.numpy().astype(numpy.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if generator is not None and state["loader"] is not None:
        generator.set_state(state["loader"])


def load_training_checkpoint(path: str) -> dict:
    """A ``checkpoint.pt`` written by :func:`fit`, read with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or not a torch file, or it is not a training
            checkpoint (names the missing entries).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"resume: {path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(error).__name__}: {str(error).splitlines()[0][:160]}") from None
    missing = [key for key in CHECKPOINT_ENTRIES if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"resume: {path} is not a training checkpoint of pyg_mefl.fit "
                         f"(missing {missing}); give the checkpoint.pt of an earlier run")
    return state


def fit(model: FaceAUModel, optimizer: torch.optim.Optimizer, loss_fn: MEFLLoss, train_loader,
        val_loader, epochs: int, out_dir: str, resume: Optional[str] = None,
        device: torch.device = torch.device("cpu"),
        log: Callable[[str], None] = print) -> List[dict]:
    r"""Train for ``epochs`` epochs (in total, counting those of a resumed run), selecting the
    weights by the validation mean F1.

    After every epoch it logs one line and writes, atomically, ``<out_dir>/checkpoint.pt``
    (model, optimizer, epochs done, RNG states including the shuffling generator of
    ``train_loader``, best validation F1 and the history) and, when the validation mean F1
    improves, ``<out_dir>/best.pt`` (the model weights). Resuming from a checkpoint continues
    exactly: ``2`` epochs straight and ``1`` plus a resumed ``1`` give the same weights.

    Args:
        model (FaceAUModel): The model, on ``device``.
        optimizer (torch.optim.Optimizer): Its optimizer.
        loss_fn (MEFLLoss): The objective.
        train_loader, val_loader: PyG ``DataLoader`` of face graphs; give ``train_loader`` a
            ``generator`` for reproducible shuffling.
        epochs (int): Total number of epochs.
        out_dir (str): Output folder (created).
        resume (str, optional): A ``checkpoint.pt`` to continue from.
        device (torch.device): Where the batches go.
        log (callable): Receives the per-epoch lines.

    Returns:
        The history: one dict per epoch (``epoch``, ``train_loss``, ``val_mean_f1``,
        ``val_accuracy``, ``seconds``).
    """
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path, best_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, BEST)
    generator = train_loader.generator
    start, best, history = 0, -math.inf, []
    if resume is not None:
        state = load_training_checkpoint(resume)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"resume: {resume} holds a different model or optimizer than this "
                             f"run (other data or options?): {str(error).splitlines()[0][:200]}"
                             ) from None
        set_rng_state(state["rng"], generator)
        start, best, history = state["epoch"], state["best_val_f1"], state["history"]
        resumed_best = os.path.join(os.path.dirname(os.path.abspath(resume)), BEST)
        if not os.path.exists(best_path) and os.path.exists(resumed_best):
            shutil.copyfile(resumed_best, best_path)
        log(f"resumed from {resume} after epoch {start}")
    for epoch in range(start, epochs):
        began = time.perf_counter()
        train_loss = train_epoch(model, train_loader, optimizer, loss_fn, device,
                                 desc=f"epoch {epoch + 1}/{epochs}")
        val = evaluate(model, val_loader, device)
        score = -math.inf if math.isnan(val["mean_f1"]) else val["mean_f1"]
        history.append({"epoch": epoch + 1, "train_loss": train_loss,
                        "val_mean_f1": val["mean_f1"], "val_accuracy": val["accuracy"],
                        "seconds": time.perf_counter() - began})
        if score > best or not os.path.exists(best_path):
            best = max(best, score)
            save_checkpoint({"model": model.state_dict(), "epoch": epoch + 1,
                             "val_mean_f1": val["mean_f1"]}, best_path)
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "rng": rng_state(generator), "best_val_f1": best,
                         "history": history}, checkpoint_path)
        log(f"epoch {epoch + 1}/{epochs}  train loss {train_loss:.4f}  "
            f"val mean F1 {val['mean_f1']:.2f}  val accuracy {val['accuracy']:.2f}  "
            f"({history[-1]['seconds']:.1f} s)")
    return history
