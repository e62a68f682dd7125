"""Reading checkpoint files: flat state dicts from paths or mappings, split into head, global
linear block and backbone."""
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

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
    prefixes removed. Files are read with ``torch.load(..., weights_only=True)``."""
    where = "checkpoint"
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
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
