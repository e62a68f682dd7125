"""pyg_mefl's own model directory: ``config.json`` and ``model.safetensors``, the layout of
``huggingface_hub``'s ``PyTorchModelHubMixin``, for any :class:`~pyg_mefl.FaceAUModel` with a
known backbone (or none) and an MEFL or ANFL head.

``config.json`` says everything needed to rebuild the model (format name and version, the
backbone and its global linear block, the head, the AU names, per-AU decision thresholds, the
preprocessing of its source, a free ``training`` record and the pyg_mefl version that wrote it);
``model.safetensors`` holds the model's own state dict (pyg_mefl's names). Reading is strict:
a missing or unknown field is a :class:`ValueError` naming it, a missing or unexpected tensor a
:class:`KeyError` naming the keys.
"""
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch.nn import Module

from ..nn.anfl import ANFL
from ..nn.blocks import LinearBlock
from ..nn.mefl import MEFL
from ..pretrained.files import HUB_CONFIG
from ..pretrained.layouts import check_source
from ..utils.files import write_atomically
from ..utils.version import __version__
from .backbones import ImageTokens, ResNetTokens, SmallCNN, SwinTokens, build_trunk
from .preprocessing import published_preprocessing, published_transform

FORMAT, FORMAT_VERSION = "pyg_mefl.FaceAUModel", 1
WEIGHTS = "model.safetensors"
DEFAULT_THRESHOLD = 0.5
HEADS = {"MEFL": (MEFL, 2), "ANFL": (ANFL, 1)}  # the head's type: its class and its stage
# The fields of each section and their JSON types (float fields take ints too).
_TOP = {"format": str, "format_version": int, "pyg_mefl_version": str, "source": (str, None),
        "backbone": (dict, None), "head": dict, "au_names": list, "thresholds": dict,
        "preprocessing": (dict, None), "dtype": str, "training": dict}
_HEAD_COMMON = {"type": str, "in_channels": int, "num_main_aus": int, "num_sub_aus": int,
                "sub_au_sources": list, "dropout": float, "check_finite": bool}
_HEAD = {"MEFL": dict(_HEAD_COMMON, num_layers=int, residual=str, edge_head=bool),
         "ANFL": dict(_HEAD_COMMON, neighbor_num=int, metric=str)}
_SMALL_CNN = {"name": str, "out_channels": int, "grid": int, "width": int, "num_stages": int}
_PUBLISHED_BACKBONE = {"name": str, "global_linear": dict}
_GLOBAL_LINEAR = {"in_channels": int, "out_channels": int, "dropout": float}


# --- writing -----------------------------------------------------------------------------------

def model_config(model, thresholds=None, training: Optional[Mapping] = None) -> dict:
    """The ``config.json`` of ``model`` (see :meth:`~pyg_mefl.FaceAUModel.save_pretrained` for
    ``thresholds`` and ``training``)."""
    au_names = list(model.au_names)
    if thresholds is None:
        thresholds = model.thresholds
    training = {} if training is None else training
    if not isinstance(training, Mapping):
        raise TypeError(f"training: expected a mapping (metrics etc.), got "
                        f"{type(training).__name__}")
    try:
        training = json.loads(json.dumps(dict(training), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise TypeError(f"training: must be JSON data (str keys, numbers, strings, lists, "
                        f"dicts; no NaN): {error}") from None
    dtype = next(p.dtype for p in model.parameters())
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "pyg_mefl_version": __version__,
            "source": model.source, "backbone": _describe_backbone(model.backbone),
            "head": _describe_head(model.head), "au_names": au_names,
            "thresholds": dict(zip(au_names, check_thresholds(thresholds, au_names))),
            "preprocessing": published_preprocessing(model.source) if model.source else None,
            "dtype": str(dtype).replace("torch.", ""), "training": training}


def check_thresholds(thresholds, au_names: Sequence[str]) -> List[float]:
    """Per-AU decision thresholds in ``au_names`` order from :obj:`None` (0.5 each), one number
    for all, a sequence in ``au_names`` order or a mapping of every AU name to its threshold;
    each in ``[0, 1]``."""
    if thresholds is None:
        return [DEFAULT_THRESHOLD] * len(au_names)
    if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        values = [thresholds] * len(au_names)
    elif isinstance(thresholds, Mapping):
        missing = [name for name in au_names if name not in thresholds]
        unknown = [name for name in thresholds if name not in au_names]
        if missing or unknown:
            raise ValueError(f"thresholds: expected one per AU; missing {missing}, not AUs of "
                             f"the model {unknown}")
        values = [thresholds[name] for name in au_names]
    elif isinstance(thresholds, Sequence) and not isinstance(thresholds, str):
        values = list(thresholds)
        if len(values) != len(au_names):
            raise ValueError(f"thresholds: expected {len(au_names)} (one per AU, in au_names "
                             f"order), got {len(values)}")
    else:
        raise TypeError(f"thresholds: expected a number, a sequence or a mapping of AU names, "
                        f"got {type(thresholds).__name__}")
    for name, value in zip(au_names, values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"thresholds: {name}: expected a probability in [0, 1], "
                             f"got {value!r}")
    return [float(value) for value in values]


def _describe_backbone(backbone: Optional[Module]) -> Optional[dict]:
    if backbone is None:
        return None
    if isinstance(backbone, SmallCNN):
        return {"name": "cnn", "out_channels": backbone.out_channels, "grid": backbone.grid,
                "width": backbone.width, "num_stages": backbone.num_stages}
    if isinstance(backbone, ImageTokens) and isinstance(backbone.trunk,
                                                        (ResNetTokens, SwinTokens)):
        block = backbone.global_linear
        return {"name": backbone.trunk.name, "global_linear": {
            "in_channels": block.lin.in_features, "out_channels": block.lin.out_features,
            "dropout": block.dropout.p}}
    raise ValueError(f"save_pretrained: a model directory describes the backbones SmallCNN and "
                     f"ImageTokens of a ResNetTokens or SwinTokens (or none), got "
                     f"{type(backbone).__name__}")


def _describe_head(head: Module) -> dict:
    kind = next((name for name, (cls, _) in HEADS.items() if type(head) is cls), None)
    if kind is None:
        raise ValueError(f"save_pretrained: a model directory describes MEFL and ANFL heads, "
                         f"got {type(head).__name__}")
    out = {"type": kind, "in_channels": head.in_channels, "num_main_aus": head.num_main_aus,
           "num_sub_aus": head.num_sub_aus, "sub_au_sources": head.sub_au_sources.tolist(),
           "dropout": head.afg.dropout.p, "check_finite": head.check_finite}
    if kind == "MEFL":
        out.update(num_layers=len(head.gnn.layers), residual=head.residual,
                   edge_head=head.edge_head is not None)
    else:
        out.update(neighbor_num=head.neighbor_num, metric=head.metric)
    return out


def save_model_directory(model, directory, thresholds=None,
                         training: Optional[Mapping] = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed) as ``config.json`` and
    ``model.safetensors``; each file is written beside its place and then moved there, so that
    a failed save leaves no half-written file. Returns the directory."""
    from safetensors.torch import save_file  # the `vision` extra
    config = model_config(model, thresholds, training)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous().clone()
             for key, value in model.state_dict().items()}
    write_atomically(directory / WEIGHTS,
                      lambda path: save_file(state, path, metadata={"format": "pt"}))
    write_atomically(directory / HUB_CONFIG, lambda path: Path(path).write_text(
        json.dumps(config, indent=2) + "\n"))
    return directory


def push_model_to_hub(model, repo_id: str, *, thresholds=None,
                      training: Optional[Mapping] = None, private: Optional[bool] = None,
                      token: Optional[str] = None, revision: Optional[str] = None,
                      commit_message: str = "Upload a pyg_mefl FaceAUModel"):
    """Save ``model`` into a temporary directory and upload its two files to the hub model repo
    ``repo_id`` (created if it does not exist) with ``huggingface_hub``'s ``HfApi``; returns what
    ``HfApi.upload_folder`` returns (the commit's information)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ModuleNotFoundError("push_to_hub needs huggingface_hub: pip install "
                                  "pyg_mefl[vision]", name="huggingface_hub") from None
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as folder:
        save_model_directory(model, folder, thresholds, training)
        options = {} if private is None else {"private": private}
        api.create_repo(repo_id, repo_type="model", exist_ok=True, **options)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                 revision=revision, commit_message=commit_message)


# --- reading -----------------------------------------------------------------------------------

def read_model_config(directory: str) -> Optional[dict]:
    """The ``config.json`` of ``directory`` when it is a pyg_mefl model directory (its
    ``format`` is :data:`FORMAT`), else :obj:`None` (a published model, or no directory)."""
    path = os.path.join(directory, HUB_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as stream:
            config = json.load(stream)
    except ValueError:
        return None  # not ours; the published reader reports the broken JSON
    return config if isinstance(config, dict) and config.get("format") == FORMAT else None


def load_model_directory(cls, directory: str, config: dict, source: Optional[str] = None,
                         stage: Optional[int] = None, backbone: Optional[str] = None,
                         **overrides):
    """A ``cls`` (:class:`~pyg_mefl.FaceAUModel`) built from ``config`` (the directory's
    ``config.json``) and strictly loaded from its ``model.safetensors``; ``source``, ``stage``
    and ``backbone``, if given, must be what the config says."""
    where = os.path.join(directory, HUB_CONFIG)
    if overrides:
        raise TypeError(f"{where}: unexpected option(s) {sorted(overrides)}: a pyg_mefl model "
                        f"directory's config.json holds the head's options")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {version!r}; this pyg_mefl reads version "
                         f"{FORMAT_VERSION} of {FORMAT} (a newer pyg_mefl may read it)")
    _check_fields(config, _TOP, "", where)
    model = _build(cls, config, where)
    asked = {"source": (check_source(source), model.source), "stage": (stage, model.stage),
             "backbone": (backbone, (config["backbone"] or {}).get("name"))}
    for name, (wanted, found) in asked.items():
        if wanted is not None and wanted != found:
            raise ValueError(f"{where}: {name}={wanted!r} was asked for, but the model "
                             f"directory holds {name} {found!r}")
    _load_weights(model, os.path.join(directory, WEIGHTS), config["dtype"])
    return model


def _check_fields(section: dict, fields: Dict[str, object], prefix: str, where: str) -> None:
    """Every field of ``fields`` in ``section`` with its JSON type, and no other."""
    missing = [prefix + name for name in fields if name not in section]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    unknown = [prefix + name for name in section if name not in fields]
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}")
    for name, types in fields.items():
        value = section[name]
        allowed = types if isinstance(types, tuple) else (types,)
        if value is None and None in allowed:
            continue
        kinds = tuple(t for t in allowed if t is not None)
        kinds = kinds + (int,) if float in kinds else kinds
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join("null" if t is None else t.__name__ for t in allowed)
            raise ValueError(f"{where}: field '{prefix}{name}': expected {names}, got "
                             f"{json.dumps(value)}")


def _build(cls, config: dict, where: str):
    source = config["source"]
    try:
        check_source(source)
    except ValueError as error:
        raise ValueError(f"{where}: field 'source': {error}") from None
    _check_preprocessing(config["preprocessing"], source, where)
    head_config = config["head"]
    if head_config.get("type") not in HEADS:
        raise ValueError(f"{where}: field 'head.type': expected one of {sorted(HEADS)}, got "
                         f"{head_config.get('type')!r}")
    _check_fields(head_config, _HEAD[head_config["type"]], "head.", where)
    head_class, stage = HEADS[head_config["type"]]
    options = {k: v for k, v in head_config.items() if k != "type"}
    try:
        head = head_class(au_names=config["au_names"], **options)
        encoder = _build_backbone(config["backbone"], head.in_channels, where)
        thresholds = check_thresholds(config["thresholds"], head.au_names)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None
    model = cls(head, encoder)
    model.source, model.stage, model.thresholds = source, stage, thresholds
    model.transform = published_transform(source) if source else None
    return model


def _check_preprocessing(preprocessing: Optional[dict], source: Optional[str],
                         where: str) -> None:
    """The preprocessing must be the source's (the model runs behind that one only)."""
    if source is None:
        if preprocessing is not None:
            raise ValueError(f"{where}: field 'preprocessing': a model without a source has "
                             f"none (null), got {json.dumps(preprocessing)[:80]}")
        return
    expected = published_preprocessing(source)
    _check_fields(preprocessing, {name: object for name in expected}, "preprocessing.", where)
    for name, value in expected.items():
        if preprocessing[name] != value:
            raise ValueError(f"{where}: field 'preprocessing.{name}': {source}'s "
                             f"preprocessing has {json.dumps(value)}, the file "
                             f"{json.dumps(preprocessing[name])}")


def _build_backbone(config: Optional[dict], head_channels: int, where: str) -> Optional[Module]:
    if config is None:
        return None
    if config.get("name") == "cnn":
        _check_fields(config, _SMALL_CNN, "backbone.", where)
        return SmallCNN(**{k: v for k, v in config.items() if k != "name"})
    _check_fields(config, _PUBLISHED_BACKBONE, "backbone.", where)
    _check_fields(config["global_linear"], _GLOBAL_LINEAR, "backbone.global_linear.", where)
    block = config["global_linear"]
    trunk = build_trunk(config["name"])
    if (block["in_channels"], block["out_channels"]) != (trunk.out_channels, head_channels):
        raise ValueError(f"backbone.global_linear maps {block['in_channels']} to "
                         f"{block['out_channels']} channels; the {trunk.name} backbone gives "
                         f"{trunk.out_channels} and the head reads {head_channels}")
    encoder = ImageTokens(trunk, head_channels)
    encoder.global_linear = LinearBlock(block["in_channels"], block["out_channels"],
                                        block["dropout"])
    return encoder


def _load_weights(model: Module, path: str, dtype_name: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; a pyg_mefl model directory holds "
                                f"{HUB_CONFIG} and {WEIGHTS}")
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{path}: field 'dtype' of {HUB_CONFIG}: expected a floating torch "
                         f"dtype such as 'float32', got {dtype_name!r}")
    from safetensors.torch import load_file  # the `vision` extra
    state = load_file(path, device="cpu")
    model.to(dtype)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise KeyError(f"{path}: the weights do not match the model of {HUB_CONFIG}: "
                       f"missing keys {_some(missing)}, unexpected keys {_some(unexpected)}")
    for key, value in expected.items():
        if state[key].shape != value.shape or state[key].dtype != value.dtype:
            raise ValueError(f"{path}: key '{key}': expected {value.dtype} of shape "
                             f"{list(value.shape)}, got {state[key].dtype} of shape "
                             f"{list(state[key].shape)}")
    model.load_state_dict(state, strict=True)


def _some(keys: List[str], limit: int = 6) -> str:
    shown = ", ".join(f"'{key}'" for key in keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"

