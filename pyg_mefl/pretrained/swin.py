"""Swin Transformer backbones saved in Microsoft's original layout (docs/math.md §10) as timm's
``SwinTransformer`` (timm >= 0.9), both ways, by a rename table.

The two layouts name every tensor alike except the patch merging that halves the map: Microsoft
stores it at the end of stage ``i`` (``layers.i.downsample``), timm at the start of stage
``i + 1``. Microsoft's files also store two buffers that timm computes and keeps out of its state
dict: each window attention's ``relative_position_index`` and each shifted block's
``attn_mask``. They are compared with timm's own when loading (a file for another window or image
size fails) and written from timm's when saving.
"""
from typing import Dict, List, Mapping, Tuple

import torch
from torch import Tensor

from .layouts import SAME, Rule
from .rename import _rename_in, _rename_out

# name: (embedding width, blocks per stage, attention heads per stage), window 7 at 224 px
SWIN_SIZES: Dict[str, Tuple[int, Tuple[int, ...], Tuple[int, ...]]] = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
TIMM_NAMES = {name: f"{name}_patch4_window7_224" for name in SWIN_SIZES}
WINDOW, IMAGE_SIZE, PATCH = 7, 224, 4

# A buffer stored by Microsoft's files and computed by timm: compared, never loaded.
FIXED = "fixed"
# Microsoft's tensors in its state-dict order; a trailing `*` marks a buffer.
_STEM = ("patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
         "patch_embed.norm.bias")
_BLOCK = ("norm1.weight", "norm1.bias", "attn.relative_position_bias_table",
          "attn.relative_position_index*", "attn.qkv.weight", "attn.qkv.bias",
          "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
          "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
_SHIFTED_BLOCK = ("attn_mask*",) + _BLOCK  # a block's own buffer precedes its submodules
_MERGE = ("reduction.weight", "norm.weight", "norm.bias")
_FINAL = ("norm.weight", "norm.bias")


def _shifted(stage: int, block: int) -> bool:
    """Odd blocks shift their windows, except in stages whose map fits in one window."""
    return block % 2 == 1 and IMAGE_SIZE // PATCH // 2 ** stage > WINDOW


def swin_rules(name: str) -> List[Rule]:
    """``(timm key, Microsoft key, SAME or FIXED)`` for every tensor of a ``name`` backbone, in
    the order of Microsoft's state dict."""
    if name not in SWIN_SIZES:
        raise ValueError(f"swin backbone: expected one of {tuple(SWIN_SIZES)}, got {name!r}")
    depths = SWIN_SIZES[name][1]

    def same_or_fixed(native: str, published: str, part: str) -> Rule:
        return (native + part.rstrip("*"), published + part.rstrip("*"),
                FIXED if part.endswith("*") else SAME)

    rules = [same_or_fixed("", "", part) for part in _STEM]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            rules += [same_or_fixed(prefix, prefix, part)
                      for part in (_SHIFTED_BLOCK if _shifted(stage, block) else _BLOCK)]
        if stage + 1 < len(depths):
            rules += [same_or_fixed(f"layers.{stage + 1}.downsample.",
                                    f"layers.{stage}.downsample.", part) for part in _MERGE]
    return rules + [same_or_fixed("", "", part) for part in _FINAL]


def swin_to_native(state: Mapping[str, Tensor], name: str, buffers: Mapping[str, Tensor],
                   expected: Mapping[str, torch.Size], where: str) -> Dict[str, Tensor]:
    """A Microsoft-layout Swin state dict as timm's, strictly: every key used, every shape
    checked against ``expected`` (timm's state dict), and every stored buffer equal to timm's own
    (``buffers``, the model's named buffers)."""
    rules = swin_rules(name)
    state = dict(state)
    for native, published, how in rules:
        if how != FIXED:
            continue
        if published not in state:
            raise KeyError(f"missing key '{published}' in the {where} (a buffer of {name} "
                           f"that Microsoft's layout stores)")
        stored, own = state.pop(published), buffers[native]
        if stored.shape != own.shape or not torch.equal(stored.to(own.dtype), own):
            raise ValueError(f"key '{published}' in the {where}: differs from the {name} "
                             f"buffer for window {WINDOW} at {IMAGE_SIZE} px (shape "
                             f"{list(stored.shape)}, expected {list(own.shape)}): the file is "
                             f"for another window or image size")
    return _rename_in(state, [rule for rule in rules if rule[2] != FIXED], expected, where)


def swin_to_published(native: Mapping[str, Tensor], name: str,
                      buffers: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """timm's Swin state dict (and its buffers) under Microsoft's names and order, fresh
    tensors."""
    return _rename_out({**native, **buffers}, swin_rules(name))
