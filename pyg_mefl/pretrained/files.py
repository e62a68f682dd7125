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

from .layouts import HEAD_PREFIX, LAYOUTS, check_source, detect_source

HUB_CONFIG = "config.json"
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # PyTorchModelHubMixin, new and old


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


# A Hugging Face hub id as the hub spells repo ids (huggingface_hub's validate_repo_id): owner and
# name of letters, digits, '-', '_' and '.', each starting and ending with a letter, digit or '_',
# no '--' or '..', the name at most 96 characters.
_HUB_ID = re.compile(r"(?=[^/]*/[^/]{1,96}$)\b[\w.-]+\b/\b[\w.-]+\b", re.ASCII)
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json", ".git")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face hub id (``owner/name`` as the hub spells it, no
    file suffix such as ``.pth``): only such names, when no such path exists, are looked up on
    the hub; anything else is a path."""
    return (isinstance(name, str) and _HUB_ID.fullmatch(name) is not None
            and "--" not in name and ".." not in name
            and os.path.splitext(name)[1].lower() not in _CHECKPOINT_SUFFIXES)


def download_hub_model(repo_id: str) -> str:
    """The local snapshot directory of the hub model ``repo_id``: its ``config.json`` and weights
    from the Hugging Face cache when they are there (no network access then, also under
    ``HF_HUB_OFFLINE=1``), downloaded otherwise. The cache, the endpoint and offline mode are
    huggingface_hub's own (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``, ...). When the model
    cannot be had (offline or no network and not cached, not on the hub): a
    :class:`FileNotFoundError` in one line naming ``repo_id`` and how to pass a local copy."""
    try:
        import huggingface_hub
        # a submodule: in huggingface_hub 2.x no attribute of the package until imported
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{repo_id}: not a local file or directory; to read it as a "
                                f"Hugging Face hub id, pip install huggingface_hub") from None
    patterns = [HUB_CONFIG, *HUB_WEIGHTS]
    try:  # the cache first: a cached model loads without the network, online too
        path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not cached; the error types differ between huggingface_hub versions
        path = None
    if path is not None and _has_model_files(path):
        return path
    cache = getattr(constants, "HF_HUB_CACHE", None) or getattr(constants,
                                                                "HUGGINGFACE_HUB_CACHE", "")
    advice = _local_copy_advice(repo_id, huggingface_hub.__version__)
    if _hub_offline(constants):
        raise FileNotFoundError(f"{repo_id}: not a local file or directory, and the Hugging Face "
                                f"hub is offline (HF_HUB_OFFLINE) with no cached copy of it in "
                                f"{cache}; {advice}") from None
    try:
        path = snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as error:  # the hub raises many types: no network, not found, gated, ...
        connection = _connection_error(error)
        if connection is not None:
            raise FileNotFoundError(f"{repo_id}: not a local file or directory, and the Hugging "
                                    f"Face hub cannot be reached ({_describe(connection)}) with "
                                    f"no cached copy of it in {cache}; {advice}") from None
        raise FileNotFoundError(f"{repo_id}: not a local file or directory, and not "
                                f"downloadable from the Hugging Face hub ({_describe(error)}); "
                                f"{advice}") from None
    return path


def _has_model_files(path: str) -> bool:
    return os.path.isfile(os.path.join(path, HUB_CONFIG)) and any(
        os.path.isfile(os.path.join(path, name)) for name in HUB_WEIGHTS)


def _hub_offline(constants) -> bool:
    """huggingface_hub's offline mode (read when it was imported), or ``HF_HUB_OFFLINE`` set
    since."""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False)) or os.environ.get(
        "HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _local_copy_advice(repo_id: str, version: str) -> str:
    """How to use a copy of ``repo_id`` downloaded elsewhere, with the download command of the
    installed huggingface_hub (``hf`` from 0.34 on, ``huggingface-cli`` before)."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    command = "hf" if numbers >= (0, 34) else "huggingface-cli"
    return (f"to use a downloaded copy, pass --checkpoint PATH (in Python: "
            f"FaceAUModel.from_pretrained(PATH)) to the model directory or weights file, e.g. "
            f"one made where there is a network by `{command} download {repo_id} --local-dir "
            f"PATH`")


# what requests, urllib3, httpx, the socket module and huggingface_hub raise for a hub that
# cannot be reached (huggingface_hub 1.x and 2.x: a LocalEntryNotFoundError caused by one)
_CONNECTION_ERRORS = {"ConnectionError", "ConnectError", "ConnectTimeout", "ConnectTimeoutError",
                      "NewConnectionError", "NameResolutionError", "gaierror", "Timeout",
                      "TimeoutException", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}


def _connection_error(error: BaseException) -> Optional[BaseException]:
    """The innermost exception in the chain of ``error`` that says the hub could not be reached
    (such as ``ConnectionRefusedError: [Errno 111] Connection refused``), or :obj:`None`."""
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if _CONNECTION_ERRORS & {cls.__name__ for cls in type(error).__mro__}:
            found = error
        error = error.__cause__ or error.__context__
    return found


def _describe(error: BaseException) -> str:
    """``Type: the first line of the message``, at most 200 characters of it."""
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
