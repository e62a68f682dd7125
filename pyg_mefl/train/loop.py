"""Training MEFL on face graphs: dense targets, the epoch loop with atomic, exactly resumable
checkpoints, and evaluation."""
import math
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch_geometric.data import Batch
from tqdm import tqdm

from ..models.face_au_model import FaceAUModel
from .checkpoints import BEST, CHECKPOINT, load_training_checkpoint, save_checkpoint, \
    set_rng_state
from .distributed import all_reduce_sum, barrier, distribute_model, gather_rng_states, \
    global_batch_loss, is_main_process, loader_generator, rank, reduce_metrics, shard_loader, \
    world_size
from .losses import MEFLLoss
from .metrics import AUMetrics
from .thresholds import calibrated_metrics


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
                device: torch.device, desc: str = "train", scheduler=None) -> float:
    """One pass over ``loader`` with a progress bar showing the running loss; returns the mean
    loss per batch. Under ``torch.distributed`` ``model`` is the
    :class:`~torch.nn.parallel.DistributedDataParallel` of :func:`fit`, ``loader`` gives this
    process's shards, and the loss and its gradient are those of the global batches
    (:func:`~pyg_mefl.train.distributed.global_batch_loss`). A ``scheduler`` (e.g.
    :func:`~pyg_mefl.train.warmup_cosine_schedule`) steps after every optimizer step."""
    model.train()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    total, steps = 0.0, 0
    with tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
              disable=not is_main_process()) as bar:
        for batch in bar:
            batch = batch.to(device)
            out = model(batch)
            loss = global_batch_loss(loss_fn, out.probs, model_targets(module, batch),
                                     out.edge_logits, getattr(batch, "edge_y", None))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
    total = all_reduce_sum(torch.tensor(total, dtype=torch.float64)).item() / world_size()
    return total / max(steps, 1)


@torch.no_grad()
def evaluate(model: FaceAUModel, loader, device: torch.device,
             thresholds: Optional[Tensor] = None) -> Dict[str, object]:
    """:class:`~pyg_mefl.metrics.AUMetrics` of the model (in eval mode) over ``loader``, at
    per-AU ``thresholds`` (default: 0.5, the published rule).
    Under ``torch.distributed`` every process must call it: each evaluates its shard of every
    batch and the confusion counts are summed over the processes."""
    model.eval()
    metrics = AUMetrics(len(model.head.au_names), 0.5 if thresholds is None else thresholds)
    for batch in shard_loader(loader, training=False):
        batch = batch.to(device)
        metrics.update(model(batch).probs, model_targets(model, batch))
    return reduce_metrics(metrics).compute()


@torch.no_grad()
def predict(model: FaceAUModel, loader, device: torch.device) -> Tuple[Tensor, Tensor]:
    """The model's scores ``[M, A]`` (in eval mode) on all faces of ``loader`` and their
    dense labels ``[M, A]`` (``-1`` unknown), on the CPU (not sharded: under
    ``torch.distributed`` every process predicts every face)."""
    model.eval()
    scores, targets = [], []
    for batch in loader:
        batch = batch.to(device)
        scores.append(model(batch).probs.float().cpu())
        targets.append(model_targets(model, batch).cpu())
    return torch.cat(scores), torch.cat(targets)


def _epochs_since_best(history: List[dict], key: str) -> int:
    scores = [h.get(key, math.nan) for h in history]  # absent from runs before calibration
    scores = [-math.inf if math.isnan(score) else score for score in scores]
    return len(scores) - 1 - max(range(len(scores)), key=scores.__getitem__) if scores else 0


def fit(model: FaceAUModel, optimizer: torch.optim.Optimizer, loss_fn: MEFLLoss, train_loader,
        val_loader, epochs: int, out_dir: str, resume: Optional[str] = None,
        device: torch.device = torch.device("cpu"),
        log: Callable[[str], None] = print, scheduler=None, calibrate: bool = False,
        patience: Optional[int] = None, extra_state: Optional[dict] = None) -> List[dict]:
    r"""Train for ``epochs`` epochs (in total, counting those of a resumed run), selecting the
    weights by the validation mean F1.

    After every epoch it logs one line and writes, atomically, ``<out_dir>/checkpoint.pt``
    (model, optimizer, epochs done, RNG states including the shuffling generator of
    ``train_loader``, best validation F1 and the history) and, when the validation mean F1
    improves, ``<out_dir>/best.pt`` (the model weights). Resuming from a checkpoint continues
    exactly: ``2`` epochs straight and ``1`` plus a resumed ``1`` give the same weights.

    Launched by ``torchrun`` (after :func:`~pyg_mefl.train.distributed.init_distributed`), it
    trains with :class:`~torch.nn.parallel.DistributedDataParallel`: each process takes its
    shard of every global batch of ``train_loader`` (whose ``batch_size`` is the global batch),
    every batch norm shares its statistics across processes, validation metrics are reduced
    from counts, and rank 0 logs and writes the checkpoints (of the unwrapped ``model``, which
    load into one process and back). Runs on any number of processes see the same global
    batches and agree to round-off.

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
        scheduler (torch.optim.lr_scheduler.LRScheduler, optional): Stepped after every
            optimizer step; its state is saved in (and resumed from) ``checkpoint.pt``.
        calibrate (bool): Calibrate per-AU thresholds on the validation split after every epoch
            (:func:`~pyg_mefl.train.calibrate_thresholds`), select the weights by the
            validation mean F1 at them, and save them in ``best.pt`` as ``thresholds``.
        patience (int, optional): Stop after this many epochs without a better validation
            score (early stopping); a resumed run that had stopped trains no further.
        extra_state (dict, optional): Entries added to ``checkpoint.pt`` and ``best.pt``
            (e.g. the fitted token normalisation).

    Returns:
        The history: one dict per epoch (``epoch``, ``train_loss``, ``val_mean_f1``,
        ``val_accuracy``, ``seconds``, with ``calibrate`` also ``val_mean_f1_calibrated``).
    """
    os.makedirs(out_dir, exist_ok=True)
    checkpoint_path, best_path = os.path.join(out_dir, CHECKPOINT), os.path.join(out_dir, BEST)
    train_loader = shard_loader(train_loader, training=True)
    generator = loader_generator(train_loader)
    main = is_main_process()
    log = log if main else (lambda line: None)
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
        if (scheduler is None) != (state.get("scheduler") is None):
            raise ValueError(f"resume: {resume} was trained "
                             f"{'without' if scheduler is not None else 'with'} a learning-rate "
                             f"schedule, this run {'has' if scheduler is not None else 'has not'} "
                             f"one (other options?)")
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        # each process continues its own random streams when the world size is unchanged
        per_rank = state.get("rng_ranks") or []
        set_rng_state(per_rank[rank()] if len(per_rank) == world_size() else state["rng"],
                      generator)
        start, best, history = state["epoch"], state["best_val_f1"], state["history"]
        resumed_best = os.path.join(os.path.dirname(os.path.abspath(resume)), BEST)
        if main and not os.path.exists(best_path) and os.path.exists(resumed_best):
            shutil.copyfile(resumed_best, best_path)
        log(f"resumed from {resume} after epoch {start}")
    network = distribute_model(model, device) if world_size() > 1 else model
    score_key = "val_mean_f1_calibrated" if calibrate else "val_mean_f1"
    extra_state = extra_state or {}
    for epoch in range(start, epochs):
        if patience is not None and _epochs_since_best(history, score_key) >= patience:
            log(f"early stop: no better validation mean F1 in {patience} epochs")
            break
        began = time.perf_counter()
        train_loss = train_epoch(network, train_loader, optimizer, loss_fn, device,
                                 desc=f"epoch {epoch + 1}/{epochs}", scheduler=scheduler)
        val = evaluate(model, val_loader, device)
        history.append({"epoch": epoch + 1, "train_loss": train_loss,
                        "val_mean_f1": val["mean_f1"], "val_accuracy": val["accuracy"]})
        thresholds = None
        if calibrate:
            thresholds, calibrated = calibrated_metrics(*predict(model, val_loader, device))
            history[-1]["val_mean_f1_calibrated"] = calibrated["mean_f1"]
        history[-1]["seconds"] = time.perf_counter() - began
        score = -math.inf if math.isnan(history[-1][score_key]) else history[-1][score_key]
        improved = score > best or not os.path.exists(best_path)
        best = max(best, score)
        rng_states = gather_rng_states(generator)
        if main and improved:
            save_checkpoint({"model": model.state_dict(), "epoch": epoch + 1,
                             "val_mean_f1": val["mean_f1"], **extra_state,
                             **({"thresholds": thresholds} if calibrate else {})}, best_path)
        if main:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "epoch": epoch + 1, "rng": rng_states[0], "best_val_f1": best,
                             "history": history, **extra_state,
                             **({} if scheduler is None else
                                {"scheduler": scheduler.state_dict()}),
                             **({"rng_ranks": rng_states} if len(rng_states) > 1 else {})},
                            checkpoint_path)
        barrier()  # every process sees the files before it goes on (or reads best.pt)
        log(f"epoch {epoch + 1}/{epochs}  train loss {train_loss:.4f}  "
            f"val mean F1 {val['mean_f1']:.2f}"
            + (f" (at calibrated thresholds {history[-1][score_key]:.2f})" if calibrate else "")
            + f"  val accuracy {val['accuracy']:.2f}  "
            f"({history[-1]['seconds']:.1f} s)")
    return history
