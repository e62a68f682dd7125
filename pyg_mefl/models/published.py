"""Whole published models (docs/math.md §10), strictly: backbone, global linear block and AU head
from one OpenGraphAU / ME-GraphAU training checkpoint or one mexca hub directory, and back.

The bodies of :meth:`FaceAUModel.from_pretrained` and
:meth:`FaceAUModel.to_published_state_dict`.
"""
import contextlib
import os
from typing import Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..nn.anfl import ANFL
from ..nn.mefl import MEFL
from ..pretrained.anfl import (anfl_head_to_published, detect_anfl_source, detect_stage,
                               load_anfl_head)
from ..pretrained.backbone_layouts import (BACKBONE_PREFIX, backbone_to_native,
                                           backbone_to_published, check_backbone_name,
                                           detect_backbone)
from ..pretrained.files import (download_hub_model, is_hub_id, read_checkpoint,
                                read_hub_directory)
from ..pretrained.head import build_mefl, load_global_linear, mefl_to_published
from ..pretrained.layouts import HEAD_PREFIX, LAYOUTS, SOURCES, check_source, detect_source
from ..pretrained.rename import global_linear_to_published
from .backbones import ImageTokens, build_trunk
from .preprocessing import published_transform

STAGES = {"anfl": 1, "mefl": 2}  # the published stage of each head
_GEM = "edge_extractor."  # only stage-2 heads have the graph edge model


@contextlib.contextmanager
def _naming(where: str):
    """Re-raise a user-facing error with the file it is about in front."""
    try:
        yield
    except (KeyError, ValueError) as error:
        message = error.args[0] if error.args else ""
        if isinstance(message, str) and not message.startswith(where):
            raise type(error)(f"{where}: {message}") from None
        raise


def resolve_model(path_or_dir) -> Union[str, Mapping]:
    """A state dict as it is; a path as a string; a hub id that is no local path as the local
    snapshot directory of the hub model (cache first, see
    :func:`~pyg_mefl.pretrained.files.download_hub_model`)."""
    if isinstance(path_or_dir, Mapping):
        return path_or_dir
    if not isinstance(path_or_dir, (str, os.PathLike)):
        raise TypeError(f"path_or_dir: expected a file, a directory, a hub id or a state dict, "
                        f"got {type(path_or_dir).__name__}")
    path = os.fspath(path_or_dir)
    if not os.path.exists(path) and is_hub_id(path):
        path = download_hub_model(path)
    return path


def read_whole_model(path_or_dir) -> Tuple[Dict[str, Tensor], dict, str]:
    """``(flat state dict, hub config or {}, the file read)`` of a checkpoint file, a hub
    directory, a hub id or a state dict."""
    path = resolve_model(path_or_dir)
    if isinstance(path, Mapping):
        return read_checkpoint(path), {}, "checkpoint"
    if os.path.isdir(path):
        return read_hub_directory(path)
    return read_checkpoint(path), {}, path


def split_whole_model(state: Mapping[str, Tensor]
                      ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Tensor]]:
    """``(head, global linear block, backbone)`` of a whole-model state dict: the ``head.`` and
    ``backbone.`` keys with their prefix removed, and the rest; each part must be there."""
    head, backbone, rest = {}, {}, {}
    for key, value in state.items():
        if key.startswith(HEAD_PREFIX):
            head[key[len(HEAD_PREFIX):]] = value
        elif key.startswith(BACKBONE_PREFIX):
            backbone[key[len(BACKBONE_PREFIX):]] = value
        else:
            rest[key] = value
    prefixes = sorted({LAYOUTS[s]["global_linear"] + "." for s in SOURCES})
    missing = [f"'{prefix}*'" for prefix, part in ((BACKBONE_PREFIX, backbone),
                                                   (HEAD_PREFIX, head)) if not part]
    if not rest:
        missing.append(" or ".join(f"'{p}*'" for p in prefixes))
    if missing:
        raise KeyError(f"not a whole model: no {' and no '.join(missing)} keys (first keys: "
                       f"{list(state)[:4]}); for a head alone use MEFL.from_pretrained")
    return head, rest, backbone


def _check_stage(stage: Optional[int], head: Mapping[str, Tensor]) -> int:
    found = STAGES[detect_stage(head)]
    if stage is None:
        return found
    if stage not in STAGES.values():
        raise ValueError(f"stage: expected 1, 2 or None, got {stage!r}")
    if stage != found:
        evidence = (f"keys such as '{HEAD_PREFIX}{next(k for k in head if k.startswith(_GEM))}'"
                    if found == 2 else f"no '{HEAD_PREFIX}{_GEM}*' keys")
        raise ValueError(f"stage={stage} was asked for, but the file holds a stage-{found} "
                         f"({'MEFL' if found == 2 else 'ANFL'}) head ({evidence}); pass "
                         f"stage={found} or leave stage=None")
    return stage


def _load_head(head: Mapping[str, Tensor], source: Optional[str], stage: int, overrides):
    if stage == 1:
        source = source or detect_anfl_source(head)
        return load_anfl_head(head, source, **overrides), source
    if overrides:
        raise TypeError(f"unexpected option(s) {sorted(overrides)}: a stage-2 (MEFL) head "
                        f"takes none")
    source = source or detect_source(head)
    return build_mefl(head, source), source


def _load_trunk(state: Mapping[str, Tensor], backbone: Optional[str]):
    found = detect_backbone(state, "backbone")
    if backbone is not None and check_backbone_name(backbone) != found:
        raise ValueError(f"backbone={backbone!r} was asked for, but the file holds a {found} "
                         f"backbone (keys '{BACKBONE_PREFIX}conv1.*' / "
                         f"'{BACKBONE_PREFIX}patch_embed.*' and their shapes)")
    trunk = build_trunk(found)
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    if dtype is not None:
        trunk.to(dtype)
    native = backbone_to_native(state, found, dict(trunk.named_buffers()),
                                {k: v.shape for k, v in trunk.state_dict().items()},
                                f"{found} backbone (keys under '{BACKBONE_PREFIX}')")
    trunk.load_state_dict(native, strict=True)
    return trunk


def _check_hub_config(config: dict, head, where: str) -> None:
    for key, value in (("n_main_aus", head.num_main_aus), ("n_sub_aus", head.num_sub_aus)):
        if key in config and config[key] != value:
            raise ValueError(f"{where}: config.json says {key}={config[key]!r}, the weights "
                             f"hold {value}")


def load_face_au_model(cls, path_or_dir, source: Optional[str] = None,
                       stage: Optional[int] = None, backbone: Optional[str] = None,
                       **overrides):
    """A ``cls`` (:class:`FaceAUModel`) built and strictly loaded from a whole published model;
    see :meth:`FaceAUModel.from_pretrained`."""
    source = check_source(source)
    state, config, where = read_whole_model(path_or_dir)
    with _naming(where):
        head_state, global_state, backbone_state = split_whole_model(state)
        stage = _check_stage(stage, head_state)
        head, source = _load_head(head_state, source, stage, overrides)
        trunk = _load_trunk(backbone_state, backbone)
        global_linear = load_global_linear(global_state, source)
        widths = (global_linear.lin.in_features, global_linear.lin.out_features)
        if widths != (trunk.out_channels, head.in_channels):
            raise ValueError(f"the global linear block maps {widths[0]} to {widths[1]} "
                             f"channels, the {trunk.name} backbone gives {trunk.out_channels} "
                             f"and the head reads {head.in_channels}")
        _check_hub_config(config, head, where)
    encoder = ImageTokens(trunk, head.in_channels)
    encoder.global_linear = global_linear
    model = cls(head, encoder)
    model.source, model.stage = source, stage
    model.transform = published_transform(source)
    return model


def face_au_model_to_published(model, layout: str, whole_model: bool = True) -> dict:
    """``model``'s weights under the names of a published ``layout``; see
    :meth:`FaceAUModel.to_published_state_dict`."""
    layout = check_source(layout, "layout")
    if isinstance(model.head, MEFL):
        head = mefl_to_published(model.head, layout)
    elif isinstance(model.head, ANFL):
        head = anfl_head_to_published(model.head, layout)
    else:
        raise ValueError(f"to_published_state_dict: no published layout for a "
                         f"{type(model.head).__name__} head")
    if not whole_model:
        return head
    encoder = model.backbone
    trunk = getattr(encoder, "trunk", None)
    if not isinstance(encoder, ImageTokens) or getattr(trunk, "name", None) is None:
        raise ValueError("to_published_state_dict: whole_model=True needs a published backbone "
                         "(ImageTokens of a ResNetTokens or SwinTokens), got "
                         f"{type(encoder).__name__}")
    out = {BACKBONE_PREFIX + k: v for k, v in backbone_to_published(
        trunk.state_dict(), trunk.name, dict(trunk.named_buffers())).items()}
    out.update(global_linear_to_published(encoder.global_linear.state_dict(),
                                          LAYOUTS[layout]["global_linear"]))
    out.update((HEAD_PREFIX + k, v) for k, v in head.items())
    return out
