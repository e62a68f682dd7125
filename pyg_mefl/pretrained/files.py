"""Reading checkpoint files: flat state dicts from paths or mappings, split into head, global
linear block and backbone."""
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

HUB_CONFIG = "config.json"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # PyTorchModelHubMixin, new and old

from .layouts import HEAD_PREFIX, LAYOUTS, check_source, detect_source


@dataclass
class CheckpointParts:
    """What a checkpoint held besides the MEFL head: its ``source`` layout, the global linear
    block (a :class:`~pyg_mefl.LinearBlock` to run on the backbone tokens before MEFL, or
    :obj:`None`) and the remaining (backbone) tensors under their checkpoint names."""
    source: str
    global_linear: Optional[torch.nn.Module] = None
    backbone: Dict[str, Tensor] = field(default_factory=dict)


def read_checkpoint(obj) -> Dict[str, Tensor]:
    """A flat state dict from a path or mapping: ``{"state_dict": ...}`` unwrapped, ``module.``
    prefixes removed. Files are read with ``torch.load(..., weights_only=True)``, or as
    safetensors when their name ends in ``.safetensors``."""
    where = "checkpoint"
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path}: is a directory; whole-model directories load with "
                                    f"FaceAUModel.from_pretrained")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            obj = _load_file(path)
        except Exception as error:  # torch raises many types for a bad or unsafe file
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"{path}: not a readable torch checkpoint (read with "
                             f"weights_only=True; {type(error).__name__}: {reason})") from None
        where = path
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict (a mapping of tensors), "
                             f"the file holds a {type(obj).__name__}")
    if not isinstance(obj, Mapping):
        raise TypeError(f"checkpoint: expected a path or a mapping of tensors, got "
                        f"{type(obj).__name__}")
    if isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state: Dict[str, Tensor] = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            error = TypeError if where == "checkpoint" else ValueError
            raise error(f"{where}: expected str keys and tensor values, got "
                        f"{key!r}: {type(value).__name__}")
        while key.startswith("module."):
            key = key[len("module."):]
        if key in state:
            raise KeyError(f"{where}: key '{key}' occurs twice (with and without 'module.')")
        state[key] = value
    return state


def split_checkpoint(state: Mapping[str, Tensor], source: Optional[str] = None
                     ) -> Tuple[str, Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]:
    """``(source, head, global_linear, backbone)`` of a flat state dict: the head's keys
    (``head.`` removed; a dict without ``head.`` keys is all head), ``source`` detected from them
    if :obj:`None`, and for a whole-model checkpoint the global linear block's keys (under that
    source's prefix) and the remaining keys, taken to be the backbone's."""
    source = check_source(source)
    if not any(key.startswith(HEAD_PREFIX) for key in state):
        head, outside = dict(state), {}
    else:
        head, outside = {}, {}
        for key, value in state.items():
            if key.startswith(HEAD_PREFIX):
                head[key[len(HEAD_PREFIX):]] = value
            else:
                outside[key] = value
    if source is None:
        source = detect_source(head)
    prefix = LAYOUTS[source]["global_linear"] + "."
    global_linear = {k: v for k, v in outside.items() if k.startswith(prefix)}
    backbone = {k: v for k, v in outside.items() if not k.startswith(prefix)}
    return source, head, global_linear, backbone


def _load_file(path: str):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file  # the `vision` extra
        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def read_hub_directory(path: str) -> Tuple[Dict[str, Tensor], dict, str]:
    """``(state dict, config, weights file)`` of a directory as
    ``PyTorchModelHubMixin.save_pretrained`` writes it: ``config.json`` and ``model.safetensors``
    or ``pytorch_model.bin``."""
    config_path = os.path.join(path, HUB_CONFIG)
    weights = [os.path.join(path, name) for name in HUB_WEIGHTS
               if os.path.isfile(os.path.join(path, name))]
    missing = ([HUB_CONFIG] if not os.path.isfile(config_path) else []) + (
        [" or ".join(HUB_WEIGHTS)] if not weights else [])
    if missing:
        raise FileNotFoundError(f"{path}: a model directory needs {HUB_CONFIG} and one of "
                                f"{list(HUB_WEIGHTS)}; missing {' and '.join(missing)}")
    try:
        with open(config_path) as stream:
            config = json.load(stream)
    except ValueError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        config = config["config"]  # the mixin's newer form: the init argument `config`
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    return read_checkpoint(weights[0]), config, weights[0]


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face hub id (``owner/name``, no file suffix)."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not name.startswith(".") \
        and os.path.splitext(name)[1] not in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def download_hub_model(repo_id: str) -> str:
    """The local directory of the hub model ``repo_id`` (downloaded or from the cache); a
    :class:`FileNotFoundError` in one line when it cannot be had (offline, not found)."""
    try:
        import huggingface_hub
    except ImportError:
        raise FileNotFoundError(f"{repo_id}: not a local file or directory; to read it as a "
                                f"Hugging Face hub id, pip install huggingface_hub") from None
    offline = huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get(
        "HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return huggingface_hub.snapshot_download(
            repo_id, allow_patterns=[HUB_CONFIG, *HUB_WEIGHTS], local_files_only=offline)
    except Exception as error:  # the hub raises many types: offline, not found, network
        if offline:
            raise FileNotFoundError(f"{repo_id}: not a local file or directory, and the Hugging "
                                    f"Face hub is offline (HF_HUB_OFFLINE) with no cached copy "
                                    f"of it") from None
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise FileNotFoundError(f"{repo_id}: not a local file or directory, and not "
                                f"downloadable from the Hugging Face hub "
                                f"({type(error).__name__}: {reason})") from None
