"""Train MEFL to recognise facial action units, out of the box.

Data (one of):
    (default)                                built-in synthetic faces (pyg_mefl.data.datasets)
    --features FILE.pt                       tokens [M, D, C], labels [M, N] (1/0/-1),
                                             optional split [M] (0/1/2) and au_names
    --data-root DIR --dataset NAME --fold K  images in the ME-GraphAU list layout, through
                                             --backbone cnn (built-in) or resnet50 (torchvision)

Writes into --out: checkpoint.pt (every epoch, atomic; --resume continues it exactly),
best.pt (best validation mean F1), metrics.json (test metrics of the best weights and two
baselines), f1_per_au.png, au_relations.png and training_curves.png.

    python examples/train_au.py --out runs/demo
"""
import argparse
import json
import math
import os
import random
import sys
import time

import matplotlib
import numpy
import torch
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
from pyg_mefl.train import au_relations, evaluate, fit, linear_probe, pooled_tokens  # noqa: E402
from pyg_mefl.train.checkpoints import BEST  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--features", help="token-features file (torch.save of a dict)")
    source.add_argument("--data-root", help="root of a data set in the ME-GraphAU list layout")
    parser.add_argument("--dataset", default="BP4D", help="data set name in the list files")
    parser.add_argument("--fold", type=int, default=1, help="fold of the list files")
    parser.add_argument("--backbone", choices=BACKBONES, default="cnn",
                        help="image backbone (with --data-root)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side (default: 64 for cnn, 224 for resnet50)")
    parser.add_argument("--channels", type=int, default=None,
                        help="token width C of the image backbone (default: 64 cnn, 512 resnet50)")
    parser.add_argument("--num-faces", type=int, default=2000, help="synthetic faces")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="AdamW learning rate (tuned for the synthetic demo; ME-GraphAU "
                        "trains ResNet-50 models at 1e-4)")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--lam", type=float, default=0.05,
                        help="weight of the edge relation loss (0: no edge head)")
    parser.add_argument("--out", default="runs/train_au", help="output folder")
    parser.add_argument("--resume", help="checkpoint.pt to continue from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


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
    right.plot(epochs, [h["val_mean_f1"] for h in history], marker="o", label="mean F1")
    right.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="accuracy")
    right.set_xlabel("epoch")
    right.set_ylabel("validation (%)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    began = time.perf_counter()
    random.seed(args.seed)
    numpy.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dataset, backbone = build_data(args)
    train, val, test = (dataset.subset(split) for split in ("train", "val", "test"))
    print(f"data: {len(train)} train, {len(val)} val, {len(test)} test faces, "
          f"{dataset.num_aus} AUs", flush=True)

    channels = backbone.out_channels if backbone is not None else dataset.tokens.size(-1)
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

    history = fit(model, optimizer, loss_fn, train_loader, val_loader, args.epochs, args.out,
                  resume=args.resume, device=device, log=lambda line: print(line, flush=True))

    model.load_state_dict(torch.load(os.path.join(args.out, BEST), map_location=device,
                                     weights_only=True)["model"])
    result = evaluate(model, test_loader, device)
    names = head.au_names
    train_x, train_y = pooled_tokens(model, DataLoader(train, batch_size=args.batch_size), device)
    test_x, test_y = pooled_tokens(model, test_loader, device)
    all_positive, probe = AUMetrics(len(names)), AUMetrics(len(names))
    all_positive.update(torch.ones(test_y.shape), test_y)
    probe.update(linear_probe(train_x, train_y, test_x), test_y)
    metrics = {
        "mean_f1": result["mean_f1"],
        "f1": dict(zip(names, result["f1"].tolist())),
        "accuracy": result["accuracy"],
        "baseline_all_positive_f1": all_positive.compute()["mean_f1"],
        "baseline_linear_probe_f1": probe.compute()["mean_f1"],
        "history": history,
        "seconds": time.perf_counter() - began,
    }
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(json_safe(metrics), f, indent=2, allow_nan=False)

    bar_plot(os.path.join(args.out, "f1_per_au.png"), names, result["f1"].tolist(),
             f"Test F1 per AU (mean {result['mean_f1']:.1f})")
    relation_plot(os.path.join(args.out, "au_relations.png"), names,
                  *au_relations(model, test_loader, device))
    curves_plot(os.path.join(args.out, "training_curves.png"), history)
    print(f"test mean F1 {metrics['mean_f1']:.2f}  accuracy {metrics['accuracy']:.2f}  |  "
          f"baselines: all-positive {metrics['baseline_all_positive_f1']:.2f}, linear probe "
          f"{metrics['baseline_linear_probe_f1']:.2f}  |  {metrics['seconds']:.0f} s, "
          f"outputs in {args.out}")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, KeyError, TypeError, ValueError, ModuleNotFoundError) as error:
        # a user's mistake (a path, a file's content, an option): one line, not a traceback
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"train_au.py: error: {message}", file=sys.stderr)
        sys.exit(2)
