"""Published MEFL head layouts (docs/math.md §8) as rename tables.

Everything that differs between the mexca, OpenGraphAU and ME-GraphAU layouts is data in
:data:`LAYOUTS`; :func:`head_rules` expands it into one ``(native key, published key(s), how)``
rule per tensor, which :mod:`pyg_mefl.pretrained.rename` applies in either direction.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..data.aus import BP4D_AUS, DISFA_AUS, OPENGRAPHAU_MAIN_AUS, OPENGRAPHAU_SUB_AUS

SOURCES = ("mexca", "opengraphau", "me-graphau")
_LINEAR = ("weight", "bias")
_BN_STATS = ("weight", "bias", "running_mean", "running_var")
_COUNTER = "num_batches_tracked"

# Where each part of the head lives in each published layout. `{a}` is an AU, `{l}` a GNN layer
# counted from 0 and `{L}` from 1, `{x}` / `{X}` one of the five gated-GNN maps u, v, a, b, e.
# `holds` lists the optional parts that the published models of a layout always have
# ("sub_aus", "edge_head"): their keys are required in a checkpoint of that layout, the keys of
# any other optional part are unexpected, and only a model with exactly these parts can be saved
# in that layout. `sub_sc` / `edge_head` name those parts in every layout all the same, for
# conversions of other configurations (tests, fine-tuned variants) with `to_native`/`to_published`.
# `au_names` gives the published main AU names per AU count, `sub_au_names` those of 14 sub AUs.
# `num_layers`: every published head stacks 2 gated-GNN layers.
# `gnn_norms_last`: the layout's GNN module declares the linear maps of all layers before their
# BatchNorms (ME-GraphAU's U1..E2, bnv1, bne1, bnv2, bne2), which orders its state dict.
_COMMON = dict(edge_proj="edge_extractor.edge_proj", edge_norm="edge_extractor.bn",
               sub_sc="sub_sc", edge_head="edge_fc")
LAYOUTS: Dict[str, Dict[str, object]] = {
    "mexca": dict(
        _COMMON, afg="main_node_linear_layers.{a}", fam="edge_extractor.fam",
        arm="edge_extractor.arm", gnn_linear="gnn.graph_layers.{l}.linear_{x}",
        bnv="gnn.graph_layers.{l}.bnv", bne="gnn.graph_layers.{l}.bne", main_sc="main_sc",
        global_linear="linear_global", residual="post", holds=("sub_aus",), num_layers=2,
        gnn_norms_last=False,
        au_names={27: OPENGRAPHAU_MAIN_AUS}, sub_au_names=OPENGRAPHAU_SUB_AUS),
    "opengraphau": dict(
        _COMMON, afg="main_class_linears.{a}", fam="edge_extractor.FAM", arm="edge_extractor.ARM",
        gnn_linear="gnn.graph_layers.{l}.{X}", bnv="gnn.graph_layers.{l}.bnv",
        bne="gnn.graph_layers.{l}.bne", main_sc="main_sc", global_linear="global_linear",
        residual="post", holds=("sub_aus",), num_layers=2,
        gnn_norms_last=False,
        au_names={27: OPENGRAPHAU_MAIN_AUS}, sub_au_names=OPENGRAPHAU_SUB_AUS),
    "me-graphau": dict(
        _COMMON, afg="class_linears.{a}", fam="edge_extractor.FAM", arm="edge_extractor.ARM",
        gnn_linear="gnn.{X}{L}", bnv="gnn.bnv{L}", bne="gnn.bne{L}", main_sc="sc",
        global_linear="global_linear", residual="pre", holds=("edge_head",), num_layers=2,
        gnn_norms_last=True,
        au_names={12: BP4D_AUS, 8: DISFA_AUS}, sub_au_names=()),
}
HEAD_PREFIX = "head."  # the MEFL head's keys in a whole-model checkpoint

# How a native tensor is made from its published key(s): the same tensor, a stack of one tensor
# per AU, or one published counter shared by all slots of a per-slot BatchNorm.
SAME, STACK, SHARED_COUNTER = "same", "stack", "shared_counter"
Rule = Tuple[str, Union[str, List[str]], str]

# The global linear block (published `fc`, `bn`) as pyg_mefl's LinearBlock (`lin`, `norm`).
GLOBAL_LINEAR_RULES: List[Rule] = (
    [(f"lin.{f}", f"fc.{f}", SAME) for f in _LINEAR]
    + [(f"norm.{f}", f"bn.{f}", SAME) for f in _BN_STATS + (_COUNTER,)])


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of a MEFL head, read off a checkpoint."""
    in_channels: int
    num_main_aus: int
    num_sub_aus: int
    num_layers: int
    edge_head: bool
    residual: str


def check_source(source: Optional[str], what: str = "source") -> Optional[str]:
    """``source`` in canonical spelling (case-insensitive), or :obj:`None` for :obj:`None`."""
    if source is None:
        return None
    if isinstance(source, str) and source.lower() in SOURCES:
        return source.lower()
    raise ValueError(f"{what}: expected one of {SOURCES}, got {source!r}")


def head_rules(source: str, config: HeadConfig) -> List[Rule]:
    """``(native key, published key or list of keys, how)`` for every tensor of the head, in the
    order of the published state dict (a run of ``STACK`` rules is stored AU by AU)."""
    lay = LAYOUTS[source]
    rules: List[Rule] = [("main_sc", lay["main_sc"], SAME)]  # the head's own parameters first
    if config.num_sub_aus:
        rules.append(("sub_sc", lay["sub_sc"], SAME))
    rules += afg_rules(lay["afg"], config.num_main_aus)
    for part in ("fam", "arm"):
        rules += [(f"gem.{part}.lin_{p}.{f}", f"{lay[part]}.linear_{p}.{f}", SAME)
                  for p in "qkv" for f in _LINEAR]
    rules += [(f"gem.lin_proj.{f}", f"{lay['edge_proj']}.{f}", SAME) for f in _LINEAR]
    rules += _bn_rules("gem.norm", lay["edge_norm"])
    linears: List[Rule] = []
    norms: List[Rule] = []
    for layer in range(config.num_layers):
        names = dict(l=layer, L=layer + 1)
        native = f"gnn.layers.{layer}"
        linears += [(f"{native}.lin_{x}.weight",
                     lay["gnn_linear"].format(x=x, X=x.upper(), **names) + ".weight", SAME)
                    for x in "uvabe"]
        norms += _bn_rules(f"{native}.norm_node", lay["bnv"].format(**names))
        norms += _bn_rules(f"{native}.norm_edge", lay["bne"].format(**names))
        if not lay["gnn_norms_last"]:
            rules += linears + norms
            linears, norms = [], []
    rules += linears + norms
    if config.edge_head:
        rules += [(f"edge_head.{f}", f"{lay['edge_head']}.{f}", SAME) for f in _LINEAR]
    return rules


def afg_rules(afg: str, num_aus: int) -> List[Rule]:
    """The rules of :class:`~pyg_mefl.nn.AUFeatureBlocks` (``afg.*``, stacked) from the published
    module list of :class:`LinearBlock` at the template ``afg`` (``{a}`` the AU)."""
    blocks = [afg.format(a=a) for a in range(num_aus)]
    return ([(f"afg.{f}", [f"{p}.fc.{f}" for p in blocks], STACK) for f in _LINEAR]
            + [(f"afg.norm.{f}", [f"{p}.bn.{f}" for p in blocks], STACK)
               for f in _BN_STATS + (_COUNTER,)])


def _bn_rules(native: str, published: str) -> List[Rule]:
    rules: List[Rule] = [(f"{native}.{f}", f"{published}.{f}", SAME) for f in _BN_STATS]
    # one published counter for all slots of a BatchNorm1d(N) / BatchNorm2d(N*N)
    rules.append((f"{native}.{_COUNTER}", f"{published}.{_COUNTER}", SHARED_COUNTER))
    return rules


def _afg_pattern(afg: str) -> "re.Pattern":
    return re.compile(re.escape(afg).replace(r"\{a\}", r"(\d+)") + r"\.")


def detect_source(head: Mapping[str, Tensor], layouts: Mapping[str, Mapping] = LAYOUTS,
                  what: str = "checkpoint layout") -> str:
    """Which of the published ``layouts`` a head state dict (or its keys) uses, from its
    AU-block key names."""
    found = [s for s in SOURCES if any(map(_afg_pattern(layouts[s]["afg"]).match, head))]
    if len(found) == 1:
        return found[0]
    markers = [layouts[s]["afg"].format(a="<i>") for s in SOURCES]
    if not found:
        raise KeyError(f"cannot tell the {what}: no key starts with any of {markers} "
                       f"(first keys: {list(head)[:5]}); pass source= explicitly")
    raise KeyError(f"cannot tell the {what}: it has AU blocks of several layouts "
                   f"{found}; pass source= explicitly")


def read_config(head: Mapping[str, Tensor], source: str) -> HeadConfig:
    """Sizes of the head stored in ``head`` (published keys of ``source``)."""
    lay = LAYOUTS[source]
    in_channels, num_main = count_au_blocks(head, lay["afg"], f"{source} checkpoint")
    num_sub = 0
    if "sub_aus" in lay["holds"]:
        num_sub = count_sub_aus(head, lay["sub_sc"], len(lay["sub_au_names"]),
                                f"{source} checkpoint")
    return HeadConfig(in_channels=in_channels, num_main_aus=num_main,
                      num_sub_aus=num_sub, num_layers=lay["num_layers"],
                      edge_head="edge_head" in lay["holds"], residual=lay["residual"])


def count_au_blocks(head: Mapping[str, Tensor], afg: str, where: str) -> Tuple[int, int]:
    """``(in_channels, number of AU blocks)`` of the AFG stored at the template ``afg``
    (``{a}`` the AU), checking that the blocks run from 0 without a gap."""
    first = afg.format(a=0) + ".fc.weight"
    if first not in head:
        raise KeyError(f"missing key '{first}' (the first AU block of a {where})")
    if head[first].dim() != 2:
        raise ValueError(f"key '{first}': expected a 2-D weight [C, C], "
                         f"got shape {list(head[first].shape)}")
    blocks = {int(m.group(1)) for m in map(_afg_pattern(afg).match, head) if m}
    num_main = next(a for a in range(len(blocks) + 1) if a not in blocks)
    if num_main != len(blocks):  # checked before a model of that size is built
        raise KeyError(f"missing key '{afg.format(a=num_main)}.fc.weight' in the {where} "
                       f"(AU blocks up to {max(blocks)} are present)")
    return head[first].shape[1], num_main


def count_sub_aus(head: Mapping[str, Tensor], sub_key: str, num_published: int,
                  where: str) -> int:
    """The number of sub AUs: the rows of the prototypes ``sub_key``, which a layout with sub
    AUs always holds, for its ``num_published`` of them."""
    if sub_key not in head:
        raise KeyError(f"missing key '{sub_key}' in the {where} (the sub AU prototypes)")
    if head[sub_key].dim() != 2 or head[sub_key].shape[0] != num_published:
        raise ValueError(f"key '{sub_key}' in the {where}: expected shape "
                         f"[{num_published}, C], got {list(head[sub_key].shape)}")
    return head[sub_key].shape[0]


def check_layout(source: str, config: HeadConfig) -> None:
    """Raise :class:`ValueError` unless the published ``source`` layout can hold ``config``."""
    lay = LAYOUTS[source]
    problems = []
    if config.residual != lay["residual"]:
        problems.append(f"residual={config.residual!r} (the layout's models are "
                        f"residual={lay['residual']!r})")
    if config.num_layers != lay["num_layers"]:
        problems.append(f"num_layers={config.num_layers} (the layout's models have "
                        f"{lay['num_layers']})")
    if config.num_sub_aus and "sub_aus" not in lay["holds"]:
        problems.append(f"sub AUs (num_sub_aus={config.num_sub_aus}; the layout has none)")
    if not config.num_sub_aus and "sub_aus" in lay["holds"]:
        problems.append("no sub AUs (the layout's models have them)")
    if config.edge_head and "edge_head" not in lay["holds"]:
        problems.append("an edge head (the layout has none)")
    if not config.edge_head and "edge_head" in lay["holds"]:
        problems.append("no edge head (the layout's models have one)")
    if problems:
        raise ValueError(f"layout {source!r} cannot hold this model: it has "
                         + "; ".join(problems))


def published_au_names(source: str, config: HeadConfig) -> Optional[List[str]]:
    """The published AU names of a ``source`` model of this size (main then sub), or
    :obj:`None` where the layout has no names for it."""
    lay = LAYOUTS[source]
    main = lay["au_names"].get(config.num_main_aus)
    if main is None or (config.num_sub_aus and config.num_sub_aus != len(lay["sub_au_names"])):
        return None
    return list(main) + list(lay["sub_au_names"][:config.num_sub_aus])
