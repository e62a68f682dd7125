"""Whole published models as the published code saves them, and independent references to run
them (test oracle, written from SPEC.md §10).

- Backbones: torchvision's ResNets and timm's Swin Transformers themselves. A Swin file in
  Microsoft's original layout is made from a timm model by string rules written here from
  docs/math.md §10
  (patch merging moved from the start of stage i+1 to the end of stage i, buffers stored, the
  original registration order), with the buffers computed here by Microsoft's formulas; the
  reference reads such a file back through timm's own ``checkpoint_filter_fn``.
- Heads: ``DenseMEFL`` (stage 2) and ``DenseANFL`` (stage 1) with ``DenseLinearBlock`` as the
  global linear block, renamed by ``to_layout`` / ``to_anfl_layout``.
"""
import json
import re
from collections import OrderedDict

import torch

from .anfl_reference import DenseANFL, to_anfl_layout
from .dense_reference import DenseLinearBlock, DenseMEFL, to_layout
from .pairs import randomize_batchnorms

WINDOW = 7
SWIN = {"swin_tiny": ("swin_tiny_patch4_window7_224", 96, (2, 2, 6, 2)),
        "swin_small": ("swin_small_patch4_window7_224", 96, (2, 2, 18, 2)),
        "swin_base": ("swin_base_patch4_window7_224", 128, (2, 2, 18, 2))}
RESNET_WIDTH = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048,
                "resnet152": 2048}
# Microsoft's SwinTransformerBlock: its own buffer attn_mask first, then norm1, attn (own table
# and index, then qkv, proj), norm2, mlp; PatchMerging: reduction before norm.
_MS_BLOCK_ORDER = ["attn_mask", "norm1.weight", "norm1.bias", "attn.relative_position_bias_table",
                   "attn.relative_position_index", "attn.qkv.weight", "attn.qkv.bias",
                   "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                   "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
_MS_MERGE_ORDER = ["reduction.weight", "norm.weight", "norm.bias"]


def timm_swin(name, device=None):
    import timm
    with torch.device(device or "cpu"):
        return timm.create_model(SWIN[name][0], pretrained=False, num_classes=0)


def torchvision_resnet(name, device=None):
    import torchvision
    with torch.device(device or "cpu"):
        model = getattr(torchvision.models, name)()
    model.fc = torch.nn.Identity()  # the published models drop the classifier ...
    model.avgpool = torch.nn.Identity()  # ... and read the layer4 map
    return model


def relative_position_index(window=WINDOW):
    """Microsoft's WindowAttention index: (dy + W - 1) * (2W - 1) + (dx + W - 1)."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(resolution, window=WINDOW):
    """Microsoft's SW-MSA mask: regions of the cyclically shifted map, -100 across regions."""
    shift = window // 2
    region = torch.zeros(resolution, resolution)
    bounds = [(0, resolution - window), (resolution - window, resolution - shift),
              (resolution - shift, resolution)]
    label = 0
    for y0, y1 in bounds:
        for x0, x1 in bounds:
            region[y0:y1, x0:x1] = label
            label += 1
    n = resolution // window
    windows = region.view(n, window, n, window).permute(0, 2, 1, 3).reshape(n * n, window ** 2)
    differs = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


def microsoft_swin_state(model, name):
    """The state dict of a timm Swin ``model`` in Microsoft's layout and order
    (docs/math.md §10)."""
    depths = SWIN[name][2]
    timm_state = model.state_dict()
    out = {}
    for key, value in timm_state.items():
        out[re.sub(r"^layers\.(\d+)\.downsample\.",
                   lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)] = value
    for stage, depth in enumerate(depths):
        resolution = 56 // 2 ** stage
        for block in range(depth):
            prefix = f"layers.{stage}.blocks.{block}."
            out[prefix + "attn.relative_position_index"] = relative_position_index()
            if block % 2 and resolution > WINDOW:
                out[prefix + "attn_mask"] = shifted_window_mask(resolution)

    def order(key):
        match = re.match(r"layers\.(\d+)\.(blocks\.(\d+)|downsample)\.(.*)", key)
        if match is None:  # patch_embed before the stages, the final norm after them
            return (-1,) if key.startswith("patch_embed") else (len(depths),)
        stage, block, rest = int(match.group(1)), match.group(3), match.group(4)
        if block is None:
            return (stage, 1, 0, _MS_MERGE_ORDER.index(rest))
        return (stage, 0, int(block), _MS_BLOCK_ORDER.index(rest))

    keys = sorted(out, key=lambda k: (order(k), list(timm_state).index(k)
                                      if k in timm_state else 0))
    return OrderedDict((k, out[k]) for k in keys)


class ReferenceTrunk(torch.nn.Module):
    """Images to backbone tokens through torchvision / timm themselves, loaded from a published
    backbone state dict (``backbone.`` removed); Swin through timm's ``checkpoint_filter_fn``."""

    def __init__(self, name, state):
        super().__init__()
        self.name = name
        if name in SWIN:
            from timm.models.swin_transformer import checkpoint_filter_fn
            self.model = timm_swin(name)
            self.model.load_state_dict(checkpoint_filter_fn(dict(state), self.model), strict=True)
        else:
            self.model = torchvision_resnet(name)
            self.model.load_state_dict(state, strict=True)

    def forward(self, images):
        if self.name in SWIN:
            return self.model.forward_features(images).flatten(1, 2)
        width = RESNET_WIDTH[self.name]
        return self.model(images).view(images.size(0), width, -1).transpose(1, 2)


def random_backbone_state(name, seed):
    """A published backbone state dict (no prefix) of random weights and BN statistics."""
    torch.manual_seed(seed)
    if name in SWIN:
        model = timm_swin(name)
        with torch.no_grad():  # LayerNorms away from their 1 / 0 init
            for norm in model.modules():
                if isinstance(norm, torch.nn.LayerNorm):
                    norm.weight.uniform_(0.5, 1.5)
                    norm.bias.normal_(0.0, 0.1)
        return microsoft_swin_state(model, name)
    model = torchvision_resnet(name)
    randomize_batchnorms(model, torch.Generator().manual_seed(seed))
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.num_batches_tracked.fill_(seed + 11)
    return OrderedDict((k, v.clone()) for k, v in model.state_dict().items())


def reference_head(stage, layout, channels, num_aus, num_sub, seed):
    """A dense stage-1 (DenseANFL) or stage-2 (DenseMEFL) head with random BN statistics."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if stage == 1:
        head = DenseANFL(channels, num_aus, num_sub, neighbor_num=3 if num_aus == 8 else 4)
    else:
        me_graphau = layout == "me-graphau"
        head = DenseMEFL(channels, num_aus, num_sub, residual="pre" if me_graphau else "post",
                         edge_head=me_graphau)
    randomize_batchnorms(head, generator)
    return head


def published_head_state(head, stage, layout):
    state = to_anfl_layout(head.state_dict(), layout) if stage == 1 else \
        to_layout(head.state_dict(), layout)
    return OrderedDict((k, v.clone()) for k, v in state.items())


def whole_model_state(backbone, global_linear, head, stage, layout):
    """The whole model's published state dict: backbone.*, the global linear block, head.*."""
    out = OrderedDict(("backbone." + k, v.clone()) for k, v in backbone.items())
    prefix = "linear_global." if layout == "mexca" else "global_linear."
    out.update((prefix + k, v.clone()) for k, v in global_linear.state_dict().items())
    out.update(("head." + k, v) for k, v in published_head_state(head, stage, layout).items())
    return out


class ReferenceModel(torch.nn.Module):
    """trunk -> DenseLinearBlock -> dense head, as the published MEFARG runs them."""

    def __init__(self, name, backbone_state, head, head_channels, seed):
        super().__init__()
        self.trunk = ReferenceTrunk(name, backbone_state)
        torch.manual_seed(seed + 1)
        width = SWIN[name][1] * 8 if name in SWIN else RESNET_WIDTH[name]
        self.global_linear = DenseLinearBlock(width, head_channels)
        randomize_batchnorms(self.global_linear, torch.Generator().manual_seed(seed + 2))
        self.head = head

    def forward(self, images):
        out = self.head(self.global_linear(self.trunk(images)))
        return out["probs"] if isinstance(out, dict) else out


def save_training_checkpoint(state, path, module_prefix=True):
    """As the published training scripts save: {'epoch', 'state_dict', 'optimizer'}."""
    if module_prefix:
        state = OrderedDict(("module." + k, v) for k, v in state.items())
    torch.save({"epoch": 19, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, path)


def save_hub_directory(state, directory, weights="model.safetensors", config=None):
    """As PyTorchModelHubMixin.save_pretrained writes mexca's MEFARG."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(
        config if config is not None else {"n_main_aus": 27, "n_sub_aus": 14}))
    if weights == "model.safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / weights))
    else:
        torch.save(state, directory / weights)
