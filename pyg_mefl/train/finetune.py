r"""Fine-tune a whole released model (backbone, global linear block, AU head) on labelled face
photos, and write what :meth:`~pyg_mefl.FaceAUModel.from_pretrained` and ``predict`` load.

Two recipes:

- ``"fine-tune"`` (the default): the loaded model trains on, as it is.
- ``"published-two-stage"``: ME-GraphAU's two stages. Stage 1 trains an ANFL head (its AU
  blocks and prototypes taken from the loaded head) on the loaded backbone at
  :data:`STAGE_LR` [1]; stage 2 trains the MEFL head, its backbone, AU blocks and prototypes
  taken from stage 1's best weights (ME-GraphAU loads the stage-1 checkpoint into the stage-2
  model, every matching tensor) and its graph layers from the loaded model when that is a
  stage-2 model (else new), at :data:`STAGE_LR` [2], with the relation loss when the head has
  an edge head.

Both use the weighted asymmetric loss (class weights from the training labels), AdamW and
ME-GraphAU's per-step cosine decay of the learning rate to zero, select the weights by the
validation mean F1 at per-AU thresholds calibrated there, and stop early after ``patience``
epochs without a better one.
"""
import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import torch
from torch import Tensor
from torch_geometric.loader import DataLoader

from ..data.datasets import SPLITS, ImageListFaceDataset
from ..data.label_csv import LabelTable, au_column_name, check_label_splits, read_label_csv
from ..models.model_dir import check_thresholds
from ..utils.files import write_atomically
from ..nn.anfl import ANFL
from ..nn.mefl import MEFL
from .checkpoints import BEST, CHECKPOINT
from .loop import fit
from .losses import MEFLLoss, au_class_weights
from .metrics import AUMetrics
from .photo_dataset import LabelledPhotoDataset, training_transform
from .photo_faces import FaceCropCache, default_cache_folder
from .schedule import warmup_cosine_schedule
from .thresholds import calibrate_thresholds

RECIPES = ("fine-tune", "published-two-stage")
# ME-GraphAU: stage 1 at -lr 0.0001 (its README), stage 2 at conf.py's default 0.00001
STAGE_LR = {1: 1e-4, 2: 1e-5}
# ME-GraphAU's relation-loss weight of stage 2 (its README: --lam 0.05)
PUBLISHED_LAM = 0.05
MODEL_DIR, METRICS = "model", "metrics.json"


@dataclass
class FinetuneSettings:
    r"""The options of a fine-tuning run (see ``docs/training.md`` for the evidence behind the
    defaults).

    Args:
        recipe (str): ``"fine-tune"`` or ``"published-two-stage"``.
        epochs (int): Most epochs (per stage).
        batch_size (int): Faces per optimizer step.
        lr (float, optional): AdamW's peak learning rate of the head (default: the recipe's:
            :data:`DEFAULT_LR` to fine-tune, :data:`STAGE_LR` per stage).
        backbone_lr_scale (float): The backbone's learning rate is ``lr`` times this.
        weight_decay (float): AdamW's weight decay (ME-GraphAU's 5e-4).
        freeze_backbone (bool): Keep the backbone's weights and batch-norm statistics.
        patience (int, optional): Stop after this many epochs without a better validation mean
            F1 (:obj:`None`: never early).
        lam (float, optional): Weight of the relation loss (default: 0.05 for a head with an
            edge head, else 0).
        augment (bool): The published train-time augmentation (:func:`training_transform`,
            flips); without it the training crops go through the model's eval transform.
        seed (int): Seeds the initial weights of new layers, the shuffling and the
            augmentation.
    """
    recipe: str = "fine-tune"
    epochs: int = 10
    batch_size: int = 16
    lr: Optional[float] = None
    backbone_lr_scale: float = 0.1
    weight_decay: float = 5e-4
    freeze_backbone: bool = False
    patience: Optional[int] = 2
    lam: Optional[float] = None
    augment: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe: expected one of {RECIPES}, got {self.recipe!r}")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        for name in ("lr", "backbone_lr_scale", "weight_decay", "lam"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience: expected a positive int or None, got {self.patience}")


DEFAULT_LR = 1e-3


def photo_dataset(model, images: List[str], labels: Tensor, split: Tensor,
                  source: str) -> LabelledPhotoDataset:
    """The labelled crops as a :class:`LabelledPhotoDataset` for ``model`` (its AUs, its eval
    transform)."""
    return LabelledPhotoDataset(images, labels, split, model.au_names, model.head.num_main_aus,
                                model.transform, source=source)


def labelled_photos(model, labels_csv: Optional[str] = None,
                    image_list: Optional[tuple] = None, crop_cache=None,
                    seed: int = 0) -> Tuple[LabelledPhotoDataset, dict]:
    r"""The labelled face crops for ``model`` and a record of where they came from.

    Args:
        model (FaceAUModel): The model to fine-tune (its AU names and preprocessing).
        labels_csv (str, optional): A labels CSV (:func:`~pyg_mefl.data.label_csv.read_label_csv`).
        image_list (tuple, optional): ``(root, name, fold)`` of face crops in the ME-GraphAU
            list layout (:class:`~pyg_mefl.datasets.ImageListFaceDataset`), instead.
        crop_cache (FaceCropCache, optional): Cuts the faces of the CSV's photos (default: the
            photos are face crops already).
        seed (int): Seed of the split where the data gives none.
    """
    if (labels_csv is None) == (image_list is None):
        raise ValueError("give labels_csv or image_list (one of them)")
    if labels_csv is not None:
        table = read_label_csv(labels_csv, model.au_names, seed=seed)
        record = {"labels": os.path.abspath(labels_csv), "au_columns": table.columns,
                  "face_crops": None if crop_cache is None else crop_cache.face_crop}
        if crop_cache is not None:
            crops = crop_cache.crops(table.paths, [f"{table.source}, line {line}"
                                                   for line in table.lines])
            table = _with_faces_only(table, crops)
            record["photos_without_a_face"] = len(crops) - len(table.paths)
        return photo_dataset(model, table.paths, table.labels, table.split,
                             table.source), record
    root, name, fold = image_list
    listed = ImageListFaceDataset(root, name, fold, seed=seed)
    columns = {}
    for column in listed.au_names:
        au, _ = au_column_name(column)
        columns[column] = au if au in model.au_names else None
    unknown = [column for column, au in columns.items() if au is None]
    if unknown:
        raise KeyError(f"{root} ({name}): AU column(s) {unknown} name AUs the model does not "
                       f"have; its AUs are {list(model.au_names)}")
    labels = torch.full((len(listed.paths), len(model.au_names)), -1, dtype=torch.long)
    for index, column in enumerate(listed.au_names):
        labels[:, model.au_names.index(columns[column])] = listed.labels[:, index]
    record = {"image_list": {"root": os.path.abspath(root), "dataset": name, "fold": fold},
              "au_columns": {au: column for column, au in columns.items()}, "face_crops": None}
    return photo_dataset(model, listed.paths, labels, listed.split, root), record


def _with_faces_only(table: LabelTable, crops: List[Optional[str]]) -> LabelTable:
    """The rows of ``table`` whose photo has a face crop, each naming its crop; every split
    must still hold a photo (:func:`~pyg_mefl.data.label_csv.check_label_splits`)."""
    found = torch.tensor([crop is not None for crop in crops], dtype=torch.bool)
    if not found.any():
        raise ValueError(f"{table.source}: no face found in any of its {len(crops)} photos")
    kept = replace(table, paths=[crop for crop in crops if crop is not None],
                   labels=table.labels[found], split=table.split[found],
                   lines=[line for line, face in zip(table.lines, found.tolist()) if face])
    check_label_splits(kept)
    return kept


def check_init_model(model, where: str) -> None:
    """A model to fine-tune on photos has a backbone and its source's preprocessing."""
    if model.backbone is None or model.transform is None:
        what = "no backbone" if model.backbone is None else "no source preprocessing"
        raise ValueError(f"{where}: the model has {what}; fine-tuning on photos needs a whole "
                         f"released model (backbone, head and the source's preprocessing)")


def finetune(model, dataset: LabelledPhotoDataset, out: str, settings: FinetuneSettings,
             resume: bool = False, device=torch.device("cpu"),
             log: Callable[[str], None] = print, record: Optional[dict] = None) -> dict:
    r"""Fine-tune ``model`` on ``dataset`` and write into ``out``: the training checkpoints
    (``checkpoint.pt``, ``best.pt``; in ``stage1/`` and ``stage2/`` for the two-stage recipe),
    ``metrics.json`` and the model directory ``model/`` (:meth:`FaceAUModel.save_pretrained`
    with the calibrated thresholds and the run's record as ``training``). Every file is written
    atomically and ``model/`` as a whole: an interrupted run leaves complete files only, and
    ``resume`` continues it exactly.

    Args:
        model (FaceAUModel): The loaded model (see :func:`check_init_model`); it is trained in
            place (the two-stage recipe returns its stage-2 model in the metrics' place only).
        dataset (LabelledPhotoDataset): The labelled crops with their splits.
        out (str): The output folder.
        settings (FinetuneSettings): The options.
        resume (bool): Continue from the checkpoints in ``out``.
        device (torch.device): Where to train.
        log (callable): Receives progress lines.
        record (dict, optional): Entries added to ``metrics.json`` and ``training`` (e.g. the
            data's description).

    Returns:
        The metrics written to ``metrics.json``.
    """
    settings.check()
    began = time.perf_counter()
    _seed(settings.seed)
    parts = {name: dataset.subset(name) for name in SPLITS}
    start = _scores_and_labels(model, {name: parts[name] for name in ("val", "test")}, device,
                               settings.batch_size)
    start_thresholds = calibrate_thresholds(*start["val"])
    os.makedirs(out, exist_ok=True)
    if settings.recipe == "fine-tune":
        history = {"fine-tune": _train_stage(model, parts, out, settings, DEFAULT_LR, resume,
                                             device, log)}
        thresholds = torch.load(os.path.join(out, BEST), map_location="cpu",
                                weights_only=True)["thresholds"]
    else:
        model, thresholds, history = _two_stages(model, parts, out, settings, resume, device,
                                                 log)
    test_scores, test_labels = _scores_and_labels(model, {"test": parts["test"]}, device,
                                                  settings.batch_size)["test"]
    labelled = [name for name, column in zip(model.au_names, dataset.labels.T)
                if bool((column >= 0).any())]
    own = check_thresholds(model.thresholds, model.au_names)  # 0.5 each without any
    metrics = {
        "recipe": settings.recipe,
        "test": _metrics(test_scores, test_labels, thresholds, model.au_names, labelled),
        "thresholds": {name: float(t) for name, t in zip(model.au_names, thresholds)
                       if name in labelled},
        "start_model": {
            "at_its_thresholds": _metrics(*start["test"], _thresholds(own), model.au_names,
                                          labelled)["mean_f1"],
            "at_thresholds_calibrated_on_val": _metrics(*start["test"], start_thresholds,
                                                        model.au_names, labelled)["mean_f1"]},
        "baseline_all_present_f1": _metrics(torch.ones_like(test_scores), test_labels, 0.5,
                                            model.au_names, labelled)["mean_f1"],
        "faces": {name: len(part) for name, part in parts.items()},
        "labelled_aus": labelled,
        "settings": asdict(settings),
        **(record or {}),
        "history": history,
    }
    metrics["seconds"] = time.perf_counter() - began
    final = [float(t) if name in labelled else float(old) for name, t, old in
             zip(model.au_names, thresholds, own)]
    _replace_model_directory(model, Path(out) / MODEL_DIR, final, metrics)
    write_atomically(Path(out) / METRICS, lambda path: Path(path).write_text(
        json.dumps(metrics, indent=2, allow_nan=False) + "\n"))
    log(f"test mean F1 {metrics['test']['mean_f1']:.2f}  |  starting model "
        f"{metrics['start_model']['at_its_thresholds']:.2f} (calibrated on val "
        f"{metrics['start_model']['at_thresholds_calibrated_on_val']:.2f}), all AUs present "
        f"{metrics['baseline_all_present_f1']:.2f}  |  {metrics['seconds']:.0f} s, model in "
        f"{Path(out) / MODEL_DIR}")
    return metrics


def _seed(seed: int) -> None:
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def _thresholds(values) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float32)


def _train_stage(model, parts: Dict[str, LabelledPhotoDataset], stage_dir: str,
                 settings: FinetuneSettings, default_lr: float, resume: bool, device,
                 log) -> List[dict]:
    """One training stage of ``model`` into ``stage_dir`` (see :func:`finetune`)."""
    lr = default_lr if settings.lr is None else settings.lr
    model.to(device)
    if settings.freeze_backbone:
        freeze(model.backbone)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    others = [p for name, p in model.named_parameters()
              if not name.startswith("backbone.") and p.requires_grad]
    groups = [{"params": others, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr * settings.backbone_lr_scale})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
    has_edge_head = isinstance(model.head, MEFL) and model.head.edge_head is not None
    lam = (PUBLISHED_LAM if has_edge_head else 0.0) if settings.lam is None else settings.lam
    train = parts["train"]
    if settings.augment:
        train = train.augmented(training_transform(model.source))
    loss_fn = MEFLLoss(au_class_weights(parts["train"].face_labels()), lam=lam).to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    train_loader = DataLoader(train, batch_size=settings.batch_size, shuffle=True,
                              generator=generator)
    val_loader = DataLoader(parts["val"], batch_size=settings.batch_size)
    steps = settings.epochs * math.ceil(len(train) / settings.batch_size)
    scheduler = warmup_cosine_schedule(optimizer, steps, 0)
    checkpoint = os.path.join(stage_dir, CHECKPOINT)
    history = fit(model, optimizer, loss_fn, train_loader, val_loader, settings.epochs,
                  stage_dir, resume=checkpoint if resume and os.path.isfile(checkpoint) else None,
                  device=device, log=log, scheduler=scheduler, calibrate=True,
                  patience=settings.patience)
    best = torch.load(os.path.join(stage_dir, BEST), map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    return history


def freeze(module) -> None:
    """Keep ``module``'s weights (no gradients) and its batch-norm statistics: it stays in eval
    mode when the model around it is set to train."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.eval()
    module.train = lambda mode=True: torch.nn.Module.train(module, False)


def _two_stages(model, parts, out: str, settings: FinetuneSettings, resume: bool, device, log):
    """ME-GraphAU's stage 1 (ANFL) then stage 2 (MEFL) on ``model``'s backbone."""
    from ..models import FaceAUModel
    head = model.head
    stage2_dir = os.path.join(out, "stage2")
    stage1 = FaceAUModel(ANFL(head.in_channels, head.num_main_aus, head.num_sub_aus,
                              au_names=head.au_names,
                              sub_au_sources=head.sub_au_sources.tolist()),
                         copy.deepcopy(model.backbone))
    stage1.source, stage1.transform = model.source, model.transform
    _copy_au_blocks(head, stage1.head)
    history = {}
    if not (resume and os.path.isfile(os.path.join(stage2_dir, CHECKPOINT))):
        history["stage1"] = _train_stage(stage1, parts, os.path.join(out, "stage1"), settings,
                                         STAGE_LR[1], resume, device, log)
    if isinstance(head, MEFL):
        stage2 = model
    else:  # a stage-1 model: new graph layers, the published OpenGraphAU head's options
        stage2 = FaceAUModel(MEFL(head.in_channels, head.num_main_aus, head.num_sub_aus,
                                  au_names=head.au_names,
                                  sub_au_sources=head.sub_au_sources.tolist()), model.backbone)
        stage2.source, stage2.transform = model.source, model.transform
    stage2.backbone.load_state_dict(stage1.backbone.state_dict())
    _copy_au_blocks(stage1.head, stage2.head)
    history["stage2"] = _train_stage(stage2, parts, stage2_dir, settings, STAGE_LR[2], resume,
                                     device, log)
    thresholds = torch.load(os.path.join(stage2_dir, BEST), map_location="cpu",
                            weights_only=True)["thresholds"]
    stage2.thresholds = model.thresholds
    return stage2, thresholds, history


def _copy_au_blocks(source_head, target_head) -> None:
    """The AU blocks and similarity prototypes of one head into another (ANFL and MEFL share
    their layout)."""
    target_head.afg.load_state_dict(source_head.afg.state_dict())
    with torch.no_grad():
        target_head.main_sc.copy_(source_head.main_sc)
        if target_head.sub_sc is not None:
            target_head.sub_sc.copy_(source_head.sub_sc)


@torch.no_grad()
def _scores_and_labels(model, parts, device, batch_size: int):
    """Each part's AU probabilities ``[M, A]`` by :meth:`FaceAUModel.predict` (the path users
    run) and its dense labels ``[M, A]``."""
    out = {}
    for name, part in parts.items():
        scores, labels = [], []
        for start in range(0, len(part), batch_size):
            items = [part[i] for i in range(start, min(len(part), start + batch_size))]
            scores.append(model.predict(torch.cat([item.image for item in items]).to(device))
                          .float().cpu())
            labels.append(part.face_labels()[start:start + len(items)])
        out[name] = (torch.cat(scores), torch.cat(labels))
    return out


def _metrics(scores: Tensor, labels: Tensor, thresholds, au_names, labelled) -> dict:
    """F1 per labelled AU, their mean, accuracy and the confusion counts."""
    metrics = AUMetrics(len(au_names), thresholds if not isinstance(thresholds, list)
                        else _thresholds(thresholds))
    metrics.update(scores, labels)
    result = metrics.compute()
    keep = [au_names.index(name) for name in labelled]
    f1 = {au_names[i]: _finite(result["f1"][i].item()) for i in keep}
    counts = {au_names[i]: {"tp": int(metrics.tp[i]), "fp": int(metrics.fp[i]),
                            "fn": int(metrics.fn[i]), "tn": int(metrics.tn[i])} for i in keep}
    return {"mean_f1": _finite(result["mean_f1"]), "accuracy": _finite(result["accuracy"]),
            "f1": f1,
            "counts": counts}


def _finite(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def _replace_model_directory(model, target: Path, thresholds, training: dict) -> None:
    """``save_pretrained`` into a temporary folder beside ``target``, then moved onto it."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.partial")
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        model.save_pretrained(temporary, thresholds=thresholds, training=training)
        if target.exists():
            os.replace(target, old)
        os.replace(temporary, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def run_finetune(args) -> dict:
    r"""``examples/train_au.py --init MODEL --labels CSV`` (or ``--data-root``): the parsed
    options to :func:`finetune`. Every input is read and checked (the model, every CSV row and
    photo, the face crops) before anything is written into ``--out``."""
    from ..models import FaceAUModel
    if args.init is None:
        raise ValueError("--labels: give the model to fine-tune with --init")
    if args.features:
        raise ValueError("--init fine-tunes on photos: give --labels CSV or --data-root, not "
                         "--features")
    if not (args.labels or args.data_root):
        raise ValueError("--init: give the labelled photos with --labels CSV (or --data-root)")
    resume = _check_resume(args.resume, args.out)
    settings = FinetuneSettings(
        recipe=args.recipe, backbone_lr_scale=args.backbone_lr_scale,
        freeze_backbone=args.freeze_backbone, augment=not args.no_augment, seed=args.seed,
        lr=args.lr, lam=args.lam,
        **{name: value for name, value in (("epochs", args.epochs),
                                           ("batch_size", args.batch_size),
                                           ("weight_decay", args.weight_decay))
           if value is not None})
    if args.patience is not None:
        settings.patience = args.patience or None  # 0: never stop early
    settings.check()
    _seed(args.seed)
    model = FaceAUModel.from_pretrained(args.init)
    check_init_model(model, f"--init {args.init}")
    crops = None
    if args.labels and not args.photos_are_crops:
        face_crop = "mexca" if model.source == "mexca" else "square"
        crops = FaceCropCache(args.crop_cache or default_cache_folder(), face_crop)
    dataset, record = labelled_photos(
        model, labels_csv=args.labels, crop_cache=crops, seed=args.seed,
        image_list=None if args.labels else (args.data_root, args.dataset, args.fold))
    record = {"init": args.init, "data": record}
    print(f"fine-tuning {args.init} ({model.source}, stage {model.stage}) on "
          + ", ".join(f"{int((dataset.split == code).sum())} {name}"
                      for code, name in enumerate(SPLITS)) + " faces", flush=True)
    return finetune(model, dataset, args.out, settings, resume=resume,
                    device=torch.device(args.device), log=lambda line: print(line, flush=True),
                    record=record)


def _check_resume(resume: Optional[str], out: str) -> bool:
    """``--resume`` of a fine-tuning run: one of the run's checkpoints in ``out``."""
    if resume is None:
        return False
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint file not found: {resume}")
    folder = os.path.dirname(os.path.abspath(resume))
    runs = [os.path.abspath(out)] + [os.path.abspath(os.path.join(out, stage))
                                     for stage in ("stage1", "stage2")]
    if os.path.basename(resume) != CHECKPOINT or folder not in runs:
        raise ValueError(f"--resume {resume}: a fine-tuning run resumes from its own "
                         f"checkpoints: give {os.path.join(out, CHECKPOINT)} (or a stage's, "
                         f"in {os.path.join(out, 'stage1')} / stage2) with the same --out")
    return True
