"""The image backbones of published whole models (docs/math.md §10): which one a file holds, read
off its keys, and its tensors renamed to the torchvision / timm modules that pyg_mefl runs.

ResNets keep torchvision's names (the published ``resnet.py`` and mexca use them); Swin backbones
go through :mod:`pyg_mefl.pretrained.swin`.
"""
import re
from typing import Dict, Mapping, Tuple

import torch
from torch import Tensor

from .layouts import SAME
from .rename import _rename_in, _rename_out
from .swin import SWIN_SIZES, swin_to_native, swin_to_published

# name: (bottleneck blocks, blocks per stage), as torchvision builds them
RESNET_BLOCKS: Dict[str, Tuple[bool, Tuple[int, ...]]] = {
    "resnet18": (False, (2, 2, 2, 2)),
    "resnet34": (False, (3, 4, 6, 3)),
    "resnet50": (True, (3, 4, 6, 3)),
    "resnet101": (True, (3, 4, 23, 3)),
    "resnet152": (True, (3, 8, 36, 3)),
}
BACKBONE_NAMES = tuple(RESNET_BLOCKS) + tuple(SWIN_SIZES)
BACKBONE_PREFIX = "backbone."  # the backbone's keys in a whole-model checkpoint
_RESNET_MARK, _SWIN_MARK = "conv1.weight", "patch_embed.proj.weight"


def check_backbone_name(name: str) -> str:
    if name not in BACKBONE_NAMES:
        raise ValueError(f"backbone: expected one of {BACKBONE_NAMES}, got {name!r}")
    return name


def backbone_channels(name: str) -> int:
    """Width :math:`C_{backbone}` of the tokens of backbone ``name``."""
    if check_backbone_name(name) in SWIN_SIZES:
        return SWIN_SIZES[name][0] * 8
    return 2048 if RESNET_BLOCKS[name][0] else 512


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    found = {m.group(1) for m in map(re.compile(pattern).match, state) if m}
    return len(found)


def detect_backbone(state: Mapping[str, Tensor], where: str) -> str:
    """Which backbone the (``backbone.``-less) ``state`` holds, from its keys and shapes."""
    if _SWIN_MARK in state:
        width = state[_SWIN_MARK].shape[0]
        depths = tuple(_count(state, rf"layers\.{s}\.blocks\.(\d+)\.") for s in range(4))
        for name, (embed, sizes, _) in SWIN_SIZES.items():
            if width == embed and depths[2] == sizes[2]:
                return name
        raise ValueError(f"{where}: a Swin backbone of width {width} with {list(depths)} blocks "
                         f"per stage (keys '{BACKBONE_PREFIX}layers.<i>.blocks.<j>.*'), none of "
                         f"{ {n: (e, list(d)) for n, (e, d, _) in SWIN_SIZES.items()} }")
    if _RESNET_MARK in state:
        bottleneck = "layer1.0.conv3.weight" in state
        blocks = tuple(_count(state, rf"layer{s}\.(\d+)\.") for s in range(1, 5))
        for name, layout in RESNET_BLOCKS.items():
            if layout == (bottleneck, blocks):
                return name
        raise ValueError(f"{where}: a ResNet backbone with {list(blocks)} "
                         f"{'bottleneck' if bottleneck else 'basic'} blocks per stage (keys "
                         f"'{BACKBONE_PREFIX}layer<s>.<b>.*'), none of "
                         f"{ {n: list(b) for n, (_, b) in RESNET_BLOCKS.items()} }")
    raise KeyError(f"{where}: cannot tell the backbone: no key '{BACKBONE_PREFIX}{_RESNET_MARK}' "
                   f"(ResNet) or '{BACKBONE_PREFIX}{_SWIN_MARK}' (Swin); backbone keys: "
                   f"{list(state)[:5]}")


def backbone_to_native(state: Mapping[str, Tensor], name: str, buffers: Mapping[str, Tensor],
                       expected: Mapping[str, torch.Size], where: str) -> Dict[str, Tensor]:
    """The published backbone tensors (``backbone.`` removed) under the names of the module that
    runs them, strictly; ``expected`` and ``buffers`` describe that module."""
    if name in SWIN_SIZES:
        return swin_to_native(state, name, buffers, expected, where)
    return _rename_in(state, [(key, key, SAME) for key in expected], expected, where)


def backbone_to_published(native: Mapping[str, Tensor], name: str,
                          buffers: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The inverse of :func:`backbone_to_native`: fresh tensors in the published order."""
    if name in SWIN_SIZES:
        return swin_to_published(native, name, buffers)
    return _rename_out(native, [(key, key, SAME) for key in native])
