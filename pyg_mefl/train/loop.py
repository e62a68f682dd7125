"""Training MEFL on face graphs: dense targets, the epoch loop with atomic, exactly resumable
checkpoints, and evaluation."""
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor
from torch_geometric.data import Batch
from tqdm import tqdm

from ..models.face_au_model import FaceAUModel
from .checkpoints import BEST, CHECKPOINT, load_training_checkpoint, rng_state, save_checkpoint, \
    set_rng_state
from .losses import MEFLLoss
from .metrics import AUMetrics


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


def model_targets(model: FaceAUModel, batch: Batch) -> Tensor:
    """:func:`au_targets` sized for ``model``'s head."""
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
            loss = loss_fn(out.probs, model_targets(model, batch), out.edge_logits,
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
        metrics.update(model(batch).probs, model_targets(model, batch))
    return metrics.compute()


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
