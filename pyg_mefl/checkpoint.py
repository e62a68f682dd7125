"""Published MEFL checkpoint layouts (SPEC §8) as rename tables, and strict loading/saving."""
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

log = logging.getLogger("pyg_mefl")

SOURCES = ("mexca", "opengraphau", "me-graphau")
_LINEAR = ("weight", "bias")
_BN_STATS = ("weight", "bias", "running_mean", "running_var")
_COUNTER = "num_batches_tracked"

# Where each part of the head lives in each published layout. `{a}` is an AU, `{l}` a GNN layer
# counted from 0 and `{L}` from 1, `{x}` / `{X}` one of the five gated-GNN maps u, v, a, b, e.
LAYOUTS: Dict[str, Dict[str, str]] = {
    "mexca": dict(
        afg="main_node_linear_layers.{a}", fam="edge_extractor.fam", arm="edge_extractor.arm",
        gnn_linear="gnn.graph_layers.{l}.linear_{x}", bnv="gnn.graph_layers.{l}.bnv",
        bne="gnn.graph_layers.{l}.bne", main_sc="main_sc", global_linear="linear_global",
        residual="post"),
    "opengraphau": dict(
        afg="main_class_linears.{a}", fam="edge_extractor.FAM", arm="edge_extractor.ARM",
        gnn_linear="gnn.graph_layers.{l}.{X}", bnv="gnn.graph_layers.{l}.bnv",
        bne="gnn.graph_layers.{l}.bne", main_sc="main_sc", global_linear="global_linear",
        residual="post"),
    "me-graphau": dict(
        afg="class_linears.{a}", fam="edge_extractor.FAM", arm="edge_extractor.ARM",
        gnn_linear="gnn.{X}{L}", bnv="gnn.bnv{L}", bne="gnn.bne{L}", main_sc="sc",
        global_linear="global_linear", residual="pre"),
}

# How a native tensor is made from its published key(s).
SAME, STACK, SHARED_COUNTER = "same", "stack", "shared_counter"


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of a MEFL head, read off a checkpoint."""
    in_channels: int
    num_main_aus: int
    num_sub_aus: int
    num_layers: int
    edge_head: bool
    residual: str


def head_rules(source: str, config: HeadConfig) -> List[Tuple[str, object, str]]:
    """``(native key, published key or list of keys, how)`` for every tensor of the head."""
    lay = LAYOUTS[source]
    afg = [lay["afg"].format(a=a) for a in range(config.num_main_aus)]
    rules = [(f"afg.{f}", [f"{p}.fc.{f}" for p in afg], STACK) for f in _LINEAR]
    rules += [(f"afg.norm.{f}", [f"{p}.bn.{f}" for p in afg], STACK) for f in _BN_STATS + (_COUNTER,)]
    for part in ("fam", "arm"):
        rules += [(f"gem.{part}.lin_{p}.{f}", f"{lay[part]}.linear_{p}.{f}", SAME)
                  for p in "qkv" for f in _LINEAR]
    rules += [(f"gem.lin_proj.{f}", f"edge_extractor.edge_proj.{f}", SAME) for f in _LINEAR]
    rules += _bn_rules("gem.norm", "edge_extractor.bn")
    for layer in range(config.num_layers):
        names = dict(l=layer, L=layer + 1)
        native = f"gnn.layers.{layer}"
        rules += [(f"{native}.lin_{x}.weight",
                   lay["gnn_linear"].format(x=x, X=x.upper(), **names) + ".weight", SAME)
                  for x in "uvabe"]
        rules += _bn_rules(f"{native}.norm_node", lay["bnv"].format(**names))
        rules += _bn_rules(f"{native}.norm_edge", lay["bne"].format(**names))
    rules.append(("main_sc", lay["main_sc"], SAME))
    if config.num_sub_aus:
        rules.append(("sub_sc", "sub_sc", SAME))
    if config.edge_head:
        rules += [(f"edge_head.{f}", f"edge_fc.{f}", SAME) for f in _LINEAR]
    return rules


def _bn_rules(native: str, published: str) -> List[Tuple[str, object, str]]:
    rules: List[Tuple[str, object, str]] = [(f"{native}.{f}", f"{published}.{f}", SAME)
                                            for f in _BN_STATS]
    # one published counter for all slots of a BatchNorm1d(N) / BatchNorm2d(N*N)
    rules.append((f"{native}.{_COUNTER}", f"{published}.{_COUNTER}", SHARED_COUNTER))
    return rules


def detect_source(head: Mapping[str, Tensor]) -> str:
    """Which published layout a head state dict uses, from its AU-block key names."""
    markers = {"main_node_linear_layers.": "mexca", "main_class_linears.": "opengraphau",
               "class_linears.": "me-graphau"}
    for prefix, source in markers.items():
        if any(key.startswith(prefix) for key in head):
            return source
    raise KeyError(f"cannot tell the checkpoint layout: no key starts with any of "
                   f"{sorted(markers)} (first keys: {list(head)[:5]})")


def read_config(head: Mapping[str, Tensor], source: str) -> HeadConfig:
    """Sizes of the head stored in ``head`` (published keys of ``source``)."""
    lay = LAYOUTS[source]
    first = lay["afg"].format(a=0) + ".fc.weight"
    if first not in head:
        raise KeyError(f"missing key '{first}' (the first AU block of a {source} checkpoint)")
    afg = re.compile(re.escape(lay["afg"]).replace(r"\{a\}", r"(\d+)") + r"\.")
    num_main = 1 + max(int(m.group(1)) for m in map(afg.match, head) if m)
    layer_key = re.compile(re.escape(lay["bnv"]).replace(r"\{l\}", r"(\d+)")
                           .replace(r"\{L\}", r"(\d+)") + r"\.")
    layers = [int(m.group(1)) for m in map(layer_key.match, head) if m]
    if not layers:
        raise KeyError(f"no gated-GNN layer keys like '{lay['bnv'].format(l=0, L=1)}.weight' "
                       f"in this {source} checkpoint")
    num_layers = max(layers) + (1 if "{l}" in lay["bnv"] else 0)
    num_sub = head["sub_sc"].shape[0] if "sub_sc" in head else 0
    return HeadConfig(in_channels=head[first].shape[1], num_main_aus=num_main,
                      num_sub_aus=num_sub, num_layers=num_layers,
                      edge_head="edge_fc.weight" in head, residual=lay["residual"])


def to_native(head: Mapping[str, Tensor], source: str, config: HeadConfig,
              expected: Mapping[str, torch.Size]) -> Dict[str, Tensor]:
    """Rename a published head state dict to pyg_mefl's names, consuming every key and checking
    each shape against ``expected`` (the native state dict's shapes)."""
    remaining = dict(head)
    native: Dict[str, Tensor] = OrderedDict()
    for name, published, how in head_rules(source, config):
        keys = published if isinstance(published, list) else [published]
        missing = [k for k in keys if k not in remaining]
        if missing:
            raise KeyError(f"missing key '{missing[0]}' in the {source} checkpoint "
                           f"(needed for {name}; {len(missing)} missing for it in all)")
        tensors = [remaining.pop(k) for k in keys]
        want = tuple(expected[name])
        per_key = want[1:] if how == STACK else () if how == SHARED_COUNTER else want
        for key, tensor in zip(keys, tensors):
            if tuple(tensor.shape) != per_key:
                raise ValueError(f"key '{key}': expected shape {list(per_key)}, "
                                 f"got {list(tensor.shape)}")
        if how == STACK:
            native[name] = torch.stack(tensors)
        elif how == SHARED_COUNTER:
            native[name] = tensors[0].expand(want).clone()
        else:
            native[name] = tensors[0]
    if remaining:
        raise KeyError(f"unexpected key(s) in the {source} checkpoint: {sorted(remaining)[:8]}")
    return native


def to_published(native: Mapping[str, Tensor], source: str,
                 config: HeadConfig) -> Dict[str, Tensor]:
    """pyg_mefl's state dict renamed to the published ``source`` layout."""
    out: Dict[str, Tensor] = OrderedDict()
    for name, published, how in head_rules(source, config):
        tensor = native[name].detach().clone()
        if how == STACK:
            out.update(zip(published, tensor.unbind(0)))
        elif how == SHARED_COUNTER:
            out[published] = tensor.max()
        else:
            out[published] = tensor
    return out


@dataclass
class CheckpointParts:
    """What a whole-model checkpoint holds besides the MEFL head."""
    source: str
    global_linear: Optional[torch.nn.Module] = None
    backbone: Dict[str, Tensor] = field(default_factory=dict)


def read_checkpoint(obj) -> Dict[str, Tensor]:
    """A flat state dict from a path or mapping: ``{"state_dict": ...}`` unwrapped, ``module.``
    prefixes removed. Read with ``weights_only=True``."""
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a bad file
            raise ValueError(f"{path}: not a readable torch checkpoint "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    if not isinstance(obj, Mapping):
        raise TypeError(f"checkpoint: expected a path or a mapping of tensors, got "
                        f"{type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    state = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(f"checkpoint: expected str keys and tensor values, got "
                            f"{key!r}: {type(value).__name__}")
        while key.startswith("module."):
            key = key[len("module."):]
        state[key] = value
    return state


def split_checkpoint(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Dict[str, Tensor]]]:
    """``(head, parts)``: the head's keys (``head.`` removed) and, for a whole-model checkpoint,
    the global linear block's keys per published prefix and the remaining backbone keys."""
    if not any(key.startswith("head.") for key in state):
        return dict(state), {"global_linear": {}, "backbone": {}}
    head, global_linear, backbone = {}, {}, {}
    prefixes = {LAYOUTS[s]["global_linear"] + "." for s in SOURCES}
    for key, value in state.items():
        if key.startswith("head."):
            head[key[len("head."):]] = value
        elif any(key.startswith(p) for p in prefixes):
            global_linear[key] = value
        else:
            backbone[key] = value
    return head, {"global_linear": global_linear, "backbone": backbone}
