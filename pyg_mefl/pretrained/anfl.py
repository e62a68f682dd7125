"""Published stage-1 (ANFL) head layouts (docs/math.md §9) as rename tables, and strict loading and
saving of :class:`~pyg_mefl.ANFL` heads: the bodies of :meth:`pyg_mefl.ANFL.from_pretrained` and
:meth:`pyg_mefl.ANFL.to_published_state_dict`, registered as such (:mod:`pyg_mefl.utils.registry`)
when this module is imported."""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from torch import Tensor

from ..nn.anfl import ANFL
from ..utils.registry import register_checkpoint_function
from .files import CheckpointParts, read_checkpoint, split_checkpoint
from .head import load_global_linear
from .layouts import (_LINEAR, HEAD_PREFIX, LAYOUTS, SAME, SOURCES, Rule, _bn_rules, afg_rules,
                      check_source, count_au_blocks, count_sub_aus, detect_source,
                      published_au_names)
from .rename import _rename_in, _rename_out

# Where each part of the stage-1 head lives in each published layout: the AU blocks (`{a}` an
# AU), the similarity prototypes, the GNN's two biased maps (`{x}` / `{X}`: u or v) and its
# BatchNorm1d(N). `afg_first`: the layout's head registers the AU blocks before the prototypes
# (mexca's `afg` and `fgg` modules), which orders its state dict. `holds`: "sub_aus" where the
# published models always have sub AUs. `neighbor_num`: the published K per number of AUs (the
# training configs; 4, the code's default, elsewhere). AU names and the global linear block's
# prefix are those of the stage-2 layouts (`LAYOUTS`).
ANFL_LAYOUTS: Dict[str, Dict[str, object]] = {
    "opengraphau": dict(afg="main_class_linears.{a}", main_sc="main_sc", sub_sc="sub_sc",
                        gnn_linear="gnn.{X}", bnv="gnn.bnv", afg_first=False,
                        holds=("sub_aus",), neighbor_num={27: 4}),
    "me-graphau": dict(afg="class_linears.{a}", main_sc="sc", sub_sc="sub_sc",
                       gnn_linear="gnn.{X}", bnv="gnn.bnv", afg_first=False, holds=(),
                       neighbor_num={12: 4, 8: 3}),
    "mexca": dict(afg="afg.main_node_linear_layers.{a}", main_sc="fgg.main_sc",
                  sub_sc="fgg.sub_sc", gnn_linear="fgg.gnn.linear_{x}", bnv="fgg.gnn.bnv",
                  afg_first=True, holds=("sub_aus",), neighbor_num={27: 4}),
}
DEFAULT_NEIGHBOR_NUM = 4
OVERRIDES = ("au_names", "check_finite", "dropout", "metric", "neighbor_num")
# A stage-2 head: every published MEFL layout has the graph edge model under this name.
_MEFL_MARKER = "edge_extractor."


@dataclass(frozen=True)
class ANFLConfig:
    """Sizes of an ANFL head, read off a checkpoint."""
    in_channels: int
    num_main_aus: int
    num_sub_aus: int


def anfl_rules(source: str, config: ANFLConfig) -> List[Rule]:
    """``(native key, published key or list of keys, how)`` for every tensor of the stage-1
    head, in the order of the published state dict."""
    lay = ANFL_LAYOUTS[source]
    prototypes: List[Rule] = [("main_sc", lay["main_sc"], SAME)]
    if config.num_sub_aus:
        prototypes.append(("sub_sc", lay["sub_sc"], SAME))
    blocks = afg_rules(lay["afg"], config.num_main_aus)
    gnn = [(f"gnn.lin_{x}.{f}", lay["gnn_linear"].format(x=x, X=x.upper()) + f".{f}", SAME)
           for x in "uv" for f in _LINEAR]
    gnn += _bn_rules("gnn.norm", lay["bnv"])
    return (blocks + prototypes if lay["afg_first"] else prototypes + blocks) + gnn


def _head_keys(state: Mapping[str, Tensor]) -> List[str]:
    """The head's keys of a whole-model (``head.``) or head-only state dict, ``module.``
    prefixes removed."""
    keys = [re.sub(r"^(module\.)+", "", key) for key in state]
    if any(key.startswith(HEAD_PREFIX) for key in keys):
        return [key[len(HEAD_PREFIX):] for key in keys if key.startswith(HEAD_PREFIX)]
    return keys


def _gnn_marker(source: str) -> str:
    return ANFL_LAYOUTS[source]["gnn_linear"].format(x="u", X="U") + ".weight"


def detect_stage(state: Mapping[str, Tensor]) -> str:
    """``"anfl"`` (stage 1) or ``"mefl"`` (stage 2): which head a published state dict holds
    (whole-model or head-only, ``module.`` prefixes or not), from its key names."""
    keys = _head_keys(state)
    stage_1 = [_gnn_marker(s) for s in SOURCES if _gnn_marker(s) in keys]
    stage_2 = [k for k in keys if k.startswith(_MEFL_MARKER)]
    if bool(stage_1) != bool(stage_2):
        return "anfl" if stage_1 else "mefl"
    if stage_1:
        raise KeyError(f"cannot tell the checkpoint's stage: it has both the stage-1 GNN key "
                       f"'{stage_1[0]}' and stage-2 keys such as '{stage_2[0]}'")
    markers = list(dict.fromkeys(_gnn_marker(s) for s in SOURCES))
    raise KeyError(f"cannot tell the checkpoint's stage: no stage-1 GNN key ({markers}) and no "
                   f"stage-2 '{_MEFL_MARKER}*' key among the head keys (first keys: "
                   f"{keys[:5]})")


def detect_anfl_source(state: Mapping[str, Tensor]) -> str:
    """Which published stage-1 layout a state dict (whole-model or head-only) uses, from its
    AU-block key names."""
    return detect_source(_head_keys(state), ANFL_LAYOUTS, "stage-1 checkpoint layout")


def read_anfl_config(head: Mapping[str, Tensor], source: str) -> ANFLConfig:
    """Sizes of the stage-1 head stored in ``head`` (published keys of ``source``)."""
    lay = ANFL_LAYOUTS[source]
    where = f"{source} stage-1 checkpoint"
    in_channels, num_main = count_au_blocks(head, lay["afg"], where)
    num_sub = 0
    if "sub_aus" in lay["holds"]:
        num_sub = count_sub_aus(head, lay["sub_sc"], len(LAYOUTS[source]["sub_au_names"]), where)
    return ANFLConfig(in_channels, num_main, num_sub)


def load_anfl_head(head: Mapping[str, Tensor], source: Optional[str] = None,
                   **overrides) -> ANFL:
    """An :class:`~pyg_mefl.ANFL` holding a published stage-1 head state dict (its own keys,
    without ``head.``), loaded strictly: every key used and every tensor's shape checked.

    Args:
        head: The head's published state dict.
        source: ``"opengraphau"``, ``"me-graphau"`` or ``"mexca"`` (detected if :obj:`None`).
        **overrides: ``neighbor_num``, ``metric``, ``au_names``, ``dropout``, ``check_finite``.

    Raises :class:`KeyError` for a missing or unexpected key or a stage-2 head, and
    :class:`ValueError` for a wrong shape, each naming the key; :class:`TypeError` for an
    unknown override.
    """
    return _build(head, check_source(source), ANFL, overrides)


def load_anfl(checkpoint, source: Optional[str] = None, cls=ANFL, **overrides) -> ANFL:
    """A ``cls`` (:class:`~pyg_mefl.ANFL`) from a published stage-1 checkpoint file or state
    dict (whole model or head), loaded strictly; see :meth:`pyg_mefl.ANFL.from_pretrained`."""
    source = check_source(source)
    state = read_checkpoint(checkpoint)
    _check_stage_1(_head_keys(state))
    source, head, global_linear, backbone = split_checkpoint(
        state, source or detect_anfl_source(state))
    model = _build(head, source, cls, overrides)
    model.checkpoint = CheckpointParts(source, load_global_linear(global_linear, source),
                                       backbone)
    return model


def anfl_head_to_published(model: ANFL, layout: str) -> Dict[str, Tensor]:
    """``model``'s weights under the names of a published stage-1 ``layout``, in its key order;
    see :meth:`pyg_mefl.ANFL.to_published_state_dict`."""
    layout = check_source(layout, "layout")
    has_sub = "sub_aus" in ANFL_LAYOUTS[layout]["holds"]
    if bool(model.num_sub_aus) != has_sub:
        held = f"num_sub_aus={model.num_sub_aus}"
        raise ValueError(f"layout {layout!r} cannot hold this model ({held}): the layout's "
                         f"stage-1 models {'have' if has_sub else 'have no'} sub AUs")
    config = ANFLConfig(model.in_channels, model.num_main_aus, model.num_sub_aus)
    return _rename_out(model.state_dict(), anfl_rules(layout, config))


def _check_stage_1(keys: List[str]) -> None:
    stage_2 = [k for k in keys if k.startswith(_MEFL_MARKER)]
    if stage_2:
        raise KeyError(f"a stage-2 (MEFL) checkpoint (keys such as '{stage_2[0]}'), not a "
                       f"stage-1 (ANFL) one: load it with MEFL.from_pretrained")


def _build(head: Mapping[str, Tensor], source: Optional[str], cls, overrides: dict) -> ANFL:
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise TypeError(f"unexpected override(s) {unknown}; expected some of {list(OVERRIDES)}")
    _check_stage_1(_head_keys(head))
    if any(key.startswith(HEAD_PREFIX) for key in head):
        raise KeyError(f"the head's own keys are expected, got whole-model keys such as "
                       f"'{next(k for k in head if k.startswith(HEAD_PREFIX))}': split them "
                       f"with split_checkpoint or use ANFL.from_pretrained")
    source = source or detect_anfl_source(head)
    config = read_anfl_config(head, source)
    neighbor_num = overrides.pop("neighbor_num", ANFL_LAYOUTS[source]["neighbor_num"].get(
        config.num_main_aus, DEFAULT_NEIGHBOR_NUM))
    au_names = overrides.pop("au_names", None) or published_au_names(source, config)
    model = cls(config.in_channels, config.num_main_aus, config.num_sub_aus,
                neighbor_num=neighbor_num, au_names=au_names, **overrides)
    dtype = head[ANFL_LAYOUTS[source]["afg"].format(a=0) + ".fc.weight"].dtype
    if dtype.is_floating_point:
        model.to(dtype)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    native = _rename_in(head, anfl_rules(source, config), expected,
                        f"{source} stage-1 checkpoint")
    model.load_state_dict(native, strict=True)
    return model


register_checkpoint_function("ANFL.from_pretrained", load_anfl)
register_checkpoint_function("ANFL.to_published_state_dict", anfl_head_to_published)
