"""Strict loading and saving of whole published MEFL heads (docs/math.md §8): the bodies of
:meth:`pyg_mefl.MEFL.from_pretrained` and :meth:`pyg_mefl.MEFL.to_published_state_dict`,
registered as such (:mod:`pyg_mefl.utils.registry`) when this module is imported."""
import logging
from typing import Mapping, Optional

from torch import Tensor

from ..nn.blocks import LinearBlock
from ..nn.mefl import MEFL
from ..utils.registry import register_checkpoint_function
from .files import CheckpointParts, read_checkpoint, split_checkpoint
from .layouts import LAYOUTS, HeadConfig, check_layout, check_source, published_au_names, \
    read_config
from .rename import global_linear_to_native, global_linear_to_published, to_native, to_published

log = logging.getLogger("pyg_mefl")


def load_mefl(checkpoint, source: Optional[str] = None, cls=MEFL) -> MEFL:
    """A ``cls`` (:class:`~pyg_mefl.MEFL`) with the weights of a published checkpoint, loaded
    strictly; see :meth:`pyg_mefl.MEFL.from_pretrained`."""
    source = check_source(source)
    source, head, global_linear, backbone = split_checkpoint(read_checkpoint(checkpoint),
                                                             source)
    model = build_mefl(head, source, cls)
    model.checkpoint = CheckpointParts(source, load_global_linear(global_linear, source),
                                       backbone)
    if backbone:
        log.info("MEFL.from_pretrained: %s checkpoint; %d backbone tensors set aside in "
                 "model.checkpoint.backbone (%s%s)%s", source, len(backbone),
                 ", ".join(list(backbone)[:3]), ", ..." if len(backbone) > 3 else "",
                 "; global linear block in model.checkpoint.global_linear"
                 if global_linear else "")
    return model


def build_mefl(head: Mapping[str, Tensor], source: str, cls=MEFL) -> MEFL:
    """A ``cls`` (:class:`~pyg_mefl.MEFL`) sized by and strictly loaded from ``head``, the head's
    own state dict in the published ``source`` layout (no ``head.`` prefix)."""
    config = read_config(head, source)
    model = cls(config.in_channels, config.num_main_aus, config.num_sub_aus,
                config.num_layers, config.residual, config.edge_head,
                au_names=published_au_names(source, config))
    dtype = head[LAYOUTS[source]["afg"].format(a=0) + ".fc.weight"].dtype
    if dtype.is_floating_point:
        model.to(dtype)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(to_native(head, source, config, expected), strict=True)
    return model


def mefl_to_published(model: MEFL, layout: str, whole_model: bool = False) -> dict:
    """``model``'s weights under the names of a published ``layout``; see
    :meth:`pyg_mefl.MEFL.to_published_state_dict`."""
    layout = check_source(layout, "layout")
    config = HeadConfig(model.in_channels, model.num_main_aus, model.num_sub_aus,
                        len(model.gnn.layers), model.edge_head is not None, model.residual)
    check_layout(layout, config)
    head = to_published(model.state_dict(), layout, config)
    if not whole_model:
        return head
    parts = getattr(model, "checkpoint", None)
    out = {k: v.detach().clone() for k, v in parts.backbone.items()} if parts else {}
    if parts and parts.global_linear is not None:
        out.update(global_linear_to_published(parts.global_linear.state_dict(),
                                              LAYOUTS[layout]["global_linear"]))
    out.update((f"head.{k}", v) for k, v in head.items())
    return out


def load_global_linear(state: dict, source: str) -> Optional[LinearBlock]:
    """The published global linear block (``fc``/``bn`` under ``global_linear`` or
    ``linear_global``) as a :class:`LinearBlock`, loaded strictly."""
    if not state:
        return None
    native = global_linear_to_native(state, LAYOUTS[source]["global_linear"])
    out_channels, in_channels = native["lin.weight"].shape
    block = LinearBlock(in_channels, out_channels).to(native["lin.weight"].dtype)
    block.load_state_dict(native, strict=True)
    return block


register_checkpoint_function("MEFL.from_pretrained", load_mefl)
register_checkpoint_function("MEFL.to_published_state_dict", mefl_to_published)
