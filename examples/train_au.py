"""Train MEFL to recognise facial action units, out of the box.

Data (one of):
    (default)                                built-in synthetic faces (pyg_mefl.data.datasets)
    --features FILE.pt                       tokens [M, D, C], labels [M, N] (1/0/-1),
                                             optional split [M] (0/1/2) and au_names
    --data-root DIR --dataset NAME --fold K  images in the ME-GraphAU list layout, through
                                             --backbone cnn (built-in) or resnet50 (torchvision)
    --init MODEL --labels CSV                fine-tune a released model (a file, a directory or
                                             a hub id) on labelled face photos (or on images in
                                             the list layout: --init with --data-root)

Token features go through --token-norm (fitted on the training split) before the model; each
AU is decided at a threshold calibrated on the validation split. Writes into --out:
checkpoint.pt (every epoch, atomic; --resume continues it exactly), best.pt (the weights of the
best validation mean F1, with the thresholds and the fitted token normalisation:
pyg_mefl.transforms.load_token_norm rebuilds it), metrics.json (test metrics of the best weights
at the thresholds and at 0.5, and two baselines), f1_per_au.png, au_relations.png and
training_curves.png. Fine-tuning (--init) writes checkpoint.pt, best.pt, metrics.json and the
model directory model/ (pyg_mefl.FaceAUModel.from_pretrained and `predict --checkpoint` load it).

    python examples/train_au.py --out runs/demo
    python examples/train_au.py --init model.pth --labels photos/labels.csv --out runs/mine
    torchrun --standalone --nproc_per_node=2 examples/train_au.py --out runs/demo2

Under torchrun each process trains on its shard of every global batch of --batch-size; rank 0
writes the files.
"""
import argparse
import copy
import json
import math
import os
import random
import signal
import sys
import time
from datetime import timedelta

import matplotlib
import numpy
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from pyg_mefl import MEFL  # noqa: E402
from pyg_mefl.models.backbones import BACKBONES, build_backbone  # noqa: E402
from pyg_mefl.data.datasets import (ImageListFaceDataset, SyntheticFaceDataset,  # noqa: E402
                               TokenFaceDataset)
from pyg_mefl.train.losses import MEFLLoss, au_class_weights  # noqa: E402
from pyg_mefl.train.metrics import AUMetrics  # noqa: E402
from pyg_mefl.models import FaceAUModel  # noqa: E402
from pyg_mefl.train import au_relations, evaluate, fit  # noqa: E402
from pyg_mefl.train.baselines import face_tokens, ridge_probe  # noqa: E402
from pyg_mefl.train.checkpoints import load_training_checkpoint  # noqa: E402
from pyg_mefl.train.schedule import LR_SCHEDULES, warmup_cosine_schedule  # noqa: E402
from pyg_mefl.train.token_norm_choice import AUTO_CANDIDATES, choose_token_norm  # noqa: E402
from pyg_mefl.transforms import TOKEN_NORM_STEPS, TokenNorm  # noqa: E402
from pyg_mefl.transforms.token_norm import CHECKPOINT_KEY as TOKEN_NORM_KEY  # noqa: E402
from pyg_mefl.train.checkpoints import BEST, CHECKPOINT  # noqa: E402
from pyg_mefl.train.distributed import (close_distributed, init_distributed,  # noqa: E402
                                        is_main_process, rank, world_size)
from pyg_mefl.train.finetune import (DEFAULT_LR as FINETUNE_LR, RECIPES, STAGE_LR,  # noqa: E402
                                     FinetuneSettings, run_finetune)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--features", help="token-features file (torch.save of a dict)")
    source.add_argument("--data-root", help="root of a data set in the ME-GraphAU list layout")
    source.add_argument("--labels", help="labels CSV of face photos (with --init): a path "
                        "column, AU columns (AU12, AU01, AU12_c), optionally a split column")
    parser.add_argument("--init", help="released model to fine-tune: a file, a model directory "
                        "or a hub id (whatever FaceAUModel.from_pretrained loads)")
    parser.add_argument("--recipe", choices=RECIPES, default="fine-tune",
                        help="with --init: train the loaded model on (fine-tune), or ME-GraphAU's "
                        "stage 1 (ANFL) then stage 2 (MEFL) (published-two-stage)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="with --init: keep the backbone's weights and statistics")
    parser.add_argument("--backbone-lr-scale", type=float,
                        default=FinetuneSettings.backbone_lr_scale,
                        help="with --init: the backbone learns at --lr times this")
    parser.add_argument("--no-augment", action="store_true",
                        help="with --init: no train-time augmentation (crop, flip, colour)")
    parser.add_argument("--photos-are-crops", action="store_true",
                        help="with --labels: the photos are face crops (no face detection)")
    parser.add_argument("--crop-cache", default=None,
                        help="with --labels: folder of cached face crops (default: "
                        "~/.cache/pyg_mefl/face_crops)")
    parser.add_argument("--dataset", default="BP4D", help="data set name in the list files")
    parser.add_argument("--fold", type=int, default=1, help="fold of the list files")
    parser.add_argument("--backbone", choices=BACKBONES, default="cnn",
                        help="image backbone (with --data-root)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: 64 for cnn, 224 for resnet50)")
    parser.add_argument("--channels", type=int, default=None,
                        help="token width C of the image backbone (default: 64 cnn, 512 resnet50)")
    parser.add_argument("--num-faces", type=int, default=2000, help="synthetic faces")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"most epochs (early stopping may end sooner; default "
                        f"{DEFAULT_EPOCHS}, or enough for {MIN_STEPS} steps on a small training "
                        f"split, at most {MAX_EPOCHS}; with --init {FinetuneSettings.epochs} per "
                        f"stage)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default 32, with --init {FinetuneSettings.batch_size}")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"AdamW peak learning rate (default {DEFAULT_LR}, chosen on the "
                        f"synthetic families of benchmarks/training_suite; with --init "
                        f"{FINETUNE_LR} for the head (see docs/training.md), and "
                        f"{STAGE_LR[1]} / {STAGE_LR[2]} for the two stages, ME-GraphAU's)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="warmup-cosine",
                        help="linear warm-up then cosine decay over --epochs, or constant")
    parser.add_argument("--warmup-epochs", type=float, default=DEFAULT_WARMUP_EPOCHS,
                        help="epochs of linear learning-rate warm-up")
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation mean F1 "
                        f"(0: never; default: {PATIENCE_FRACTION} of --epochs, at least "
                        f"{MIN_PATIENCE}, which scales with the schedule; with --init "
                        f"{FinetuneSettings.patience})")
    parser.add_argument("--token-norm", type=_token_norm_name, default=DEFAULT_TOKEN_NORM,
                        help="token normalisation fitted on the training split: 'auto' (chosen "
                        f"on the training data from {list(AUTO_CANDIDATES)}), 'none', or steps "
                        f"from {sorted(TOKEN_NORM_STEPS)} joined with '+' (token features only)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help=f"AdamW's decoupled weight decay (default {DEFAULT_WEIGHT_DECAY} "
                        f"on token features, chosen on the training suite; ME-GraphAU's "
                        f"{IMAGE_WEIGHT_DECAY} with --data-root or --init)")
    parser.add_argument("--lam", type=float, default=None,
                        help="weight of the edge relation loss (0: no edge head; default 0.05, "
                        "with --init 0.05 for a model with an edge head, else 0)")
    parser.add_argument("--out", default="runs/train_au", help="output folder")
    parser.add_argument("--resume", help="checkpoint.pt to continue from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (under torchrun: each process takes cuda:LOCAL_RANK)")
    parser.add_argument("--dist-timeout", type=float, default=600,
                        help="under torchrun: seconds a process waits for the others in a "
                        "collective before it gives up")
    return parser.parse_args(argv)


# The recipe chosen on benchmarks/training_suite (see its README): every family, not the demo.
DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_WARMUP_EPOCHS = 10, 1e-2, 1.0
# AdamW's weight decay on token features; images (--data-root) keep ME-GraphAU's.
DEFAULT_WEIGHT_DECAY, IMAGE_WEIGHT_DECAY = 0.1, 5e-4
# Without --epochs a small training split trains for more epochs: at least MIN_STEPS optimizer
# steps (10 epochs of the suite's 2800 faces are 880), at most MAX_EPOCHS epochs.
MIN_STEPS, MAX_EPOCHS = 800, 100
PATIENCE_FRACTION, MIN_PATIENCE = 0.3, 3
DEFAULT_TOKEN_NORM = "auto"


def _token_norm_name(name):
    if name != "auto":
        TokenNorm(name)  # a ValueError names the steps it takes
    return name


def resumed_token_norm(args):
    """The token normalisation of the checkpoint to resume (``None`` without ``--resume``);
    a resumed run keeps it."""
    if args.resume is None:
        return None
    saved = load_training_checkpoint(args.resume).get(TOKEN_NORM_KEY)
    name = "none" if saved is None else saved["name"]
    if args.token_norm not in ("auto", name):
        raise ValueError(f"resume: {args.resume} was trained with --token-norm {name}, this run "
                         f"has --token-norm {args.token_norm}")
    return name


def build_token_norm(args, train, val, backbone):
    """The token normalisation, chosen (``auto``) and fitted on the training faces (``none``
    for image data)."""
    if backbone is not None:
        if args.token_norm not in ("none", "auto"):
            raise ValueError(f"--token-norm {args.token_norm}: token normalisation applies to "
                             f"token features; with --data-root the backbone learns its tokens")
        return TokenNorm("none")
    train_tokens = train.tokens[train.index_tensor()]
    name = resumed_token_norm(args) or args.token_norm
    if name == "auto":
        name, scores = choose_token_norm(train_tokens, train.face_labels(),
                                         val.tokens[val.index_tensor()], val.face_labels(),
                                         seed=args.seed)
        if is_main_process():
            print(f"token normalisation: {name} (auto: validation mean F1 of a token-wise MLP "
                  + ", ".join(f"{key} {value:.1f}" for key, value in scores.items()) + ")",
                  flush=True)
    token_norm = TokenNorm(name)
    return token_norm.fit([Data(tokens=train_tokens)]) if token_norm.needs_fit else token_norm


def default_epochs(train_faces, batch_size):
    """Epochs without ``--epochs``: :data:`DEFAULT_EPOCHS`, or as many as make
    :data:`MIN_STEPS` optimizer steps on a small training split (at most :data:`MAX_EPOCHS`)."""
    steps_per_epoch = math.ceil(train_faces / batch_size)
    return min(MAX_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))


def patience(args):
    """Early-stopping patience in epochs (``None``: never stop early)."""
    if args.patience is None:
        return max(MIN_PATIENCE, round(PATIENCE_FRACTION * args.epochs))
    if args.patience < 0:
        raise ValueError(f"--patience: expected an int >= 0 (0: never stop early), got "
                         f"{args.patience}")
    return args.patience or None


def with_transform(part, transform):
    part = copy.copy(part)
    part.transform = transform
    return part


def build_data(args):
    """The data set and, for images, the backbone."""
    if args.features:
        return TokenFaceDataset.from_file(args.features, seed=args.seed), None
    if args.data_root:
        size = args.image_size or (64 if args.backbone == "cnn" else 224)
        channels = args.channels or (64 if args.backbone == "cnn" else 512)
        dataset = ImageListFaceDataset(args.data_root, args.dataset, args.fold, image_size=size,
                                       seed=args.seed)
        return dataset, build_backbone(args.backbone, channels)
    return SyntheticFaceDataset(args.num_faces, seed=args.seed), None


def json_safe(value):
    """``value`` with NaN (e.g. the F1 of an AU without known test labels) as ``null``."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def bar_plot(path, names, values, title):
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def relation_plot(path, names, matrix, what):
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(names) + 2),) * 2)
    image = ax.imshow(matrix.numpy(), cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("source AU j")
    ax.set_ylabel("target AU i")
    ax.set_title(f"Learned AU relations on the test set\n(mean over faces of the {what})",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_plot(path, history):
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss")
    right.plot(epochs, [h.get("val_mean_f1_calibrated", math.nan) for h in history],
               marker="o", label="mean F1 (calibrated thresholds)")
    right.plot(epochs, [h["val_mean_f1"] for h in history], marker="o", label="mean F1 at 0.5")
    right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("validation (%)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.init or args.labels:
        return run_finetune(args)
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    args.lr = DEFAULT_LR if args.lr is None else args.lr
    args.lam = 0.05 if args.lam is None else args.lam
    began = time.perf_counter()
    random.seed(args.seed)
    numpy.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = init_distributed(args.device, timedelta(seconds=args.dist_timeout))
    main_process = is_main_process()
    dataset, backbone = build_data(args)
    raw = [dataset.subset(split) for split in ("train", "val", "test")]
    token_norm = build_token_norm(args, raw[0], raw[1], backbone)
    train, val, test = (with_transform(part, token_norm) for part in raw)
    if args.epochs is None:
        args.epochs = default_epochs(len(train), args.batch_size)
    if args.weight_decay is None:
        args.weight_decay = DEFAULT_WEIGHT_DECAY if backbone is None else IMAGE_WEIGHT_DECAY
    if main_process:
        print(f"data: {len(train)} train, {len(val)} val, {len(test)} test faces, "
              f"{dataset.num_aus} AUs" + (f", {world_size()} processes sharing each batch of "
                                          f"{args.batch_size}" if world_size() > 1 else ""),
              flush=True)

    channels = backbone.out_channels if backbone is not None else train[0].tokens.size(-1)
    head = MEFL(channels, dataset.num_aus, num_sub_aus=0, edge_head=args.lam > 0,
                au_names=dataset.au_names)
    model = FaceAUModel(head, backbone).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = MEFLLoss(au_class_weights(train.face_labels()), lam=args.lam).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True,
                              generator=generator)
    val_loader = DataLoader(val, batch_size=args.batch_size)
    test_loader = DataLoader(test, batch_size=args.batch_size)
    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    scheduler = None if args.lr_schedule == "constant" else warmup_cosine_schedule(
        optimizer, steps, min(steps, round(args.warmup_epochs * steps / args.epochs)))

    history = fit(model, optimizer, loss_fn, train_loader, val_loader, args.epochs, args.out,
                  resume=args.resume, device=device, log=lambda line: print(line, flush=True),
                  scheduler=scheduler, calibrate=True, patience=patience(args),
                  extra_state={TOKEN_NORM_KEY: token_norm.state_dict()})

    best = torch.load(os.path.join(args.out, BEST), map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    thresholds = best.get("thresholds")  # absent from runs before calibration
    # every process: its shard, counts reduced
    result = evaluate(model, test_loader, device, thresholds)
    at_half = evaluate(model, test_loader, device)
    if not main_process:
        return None
    names = head.au_names
    # baselines on the tokens as given (through the trained backbone for images)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        face_tokens(model, DataLoader(part, batch_size=args.batch_size), device) for part in raw)
    probe = ridge_probe(train_x.flatten(1), train_y, val_x.flatten(1), val_y, test_x.flatten(1))
    all_positive, ridge = AUMetrics(len(names)), AUMetrics(len(names), probe.thresholds)
    all_positive.update(torch.ones(test_y.shape), test_y)
    ridge.update(probe.scores, test_y)
    metrics = {
        "mean_f1": result["mean_f1"],
        "mean_f1_at_0.5": at_half["mean_f1"],
        "f1": dict(zip(names, result["f1"].tolist())),
        "accuracy": result["accuracy"],
        "thresholds": None if thresholds is None else dict(zip(names, thresholds.tolist())),
        "token_norm": token_norm.name,
        "baseline_all_positive_f1": all_positive.compute()["mean_f1"],
        "baseline_ridge_probe_f1": ridge.compute()["mean_f1"],
        "history": history,
        "world_size": world_size(),
        "batch_size": args.batch_size,
        "settings": {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay},
        "seconds": time.perf_counter() - began,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(json_safe(metrics), f, indent=2, allow_nan=False)

    bar_plot(os.path.join(args.out, "f1_per_au.png"), names, result["f1"].tolist(),
             f"Test F1 per AU (mean {result['mean_f1']:.1f})")
    relation_plot(os.path.join(args.out, "au_relations.png"), names,
                  *au_relations(model, test_loader, device))
    curves_plot(os.path.join(args.out, "training_curves.png"), history)
    print(f"test mean F1 {metrics['mean_f1']:.2f} (at 0.5: {metrics['mean_f1_at_0.5']:.2f})  "
          f"accuracy {metrics['accuracy']:.2f}  |  baselines: all-positive "
          f"{metrics['baseline_all_positive_f1']:.2f}, ridge probe on the tokens "
          f"{metrics['baseline_ridge_probe_f1']:.2f}  |  {metrics['seconds']:.0f} s, "
          f"outputs in {args.out}")
    return metrics


def _resume_hint():
    out = parse_args().out
    return f"continue with --resume {os.path.join(out, CHECKPOINT)}" \
        if os.path.exists(os.path.join(out, CHECKPOINT)) else "no checkpoint was written yet"


def _lost_a_process(error):
    # NCCL raises DistError; gloo a RuntimeError from its transport ("Connection closed by
    # peer", "Timed out") when another process died or stopped answering
    return isinstance(error, torch.distributed.DistError) or \
        world_size() > 1 and "gloo" in str(error)


def _stopped_by_launcher(signum, frame):
    # torchrun stops the other processes when one fails (e.g. killed): say so, in one line
    print(f"train_au.py: rank {rank()}: stopped by the launcher (signal {signum}) because "
          f"another process of the job failed; {_resume_hint()}", file=sys.stderr, flush=True)
    os._exit(1)


if __name__ == "__main__":
    if "TORCHELASTIC_RUN_ID" in os.environ:
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        main()
    except (FileNotFoundError, KeyError, TypeError, ValueError, ModuleNotFoundError) as error:
        # a user's mistake (a path, a file's content, an option): one line, not a traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"train_au.py: error: {message}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as error:
        if not _lost_a_process(error):
            raise
        print(f"train_au.py: rank {rank()}: the distributed job lost a process "
              f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
              f"{_resume_hint()}", file=sys.stderr)
        sys.exit(1)
    finally:
        close_distributed()
