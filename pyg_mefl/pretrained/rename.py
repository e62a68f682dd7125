"""Apply the rename rules of :mod:`pyg_mefl.pretrained.layouts`: published state dicts to
pyg_mefl's names and back, strictly (every key used, every shape checked)."""
from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor

from .layouts import (_BN_STATS, GLOBAL_LINEAR_RULES, SHARED_COUNTER, STACK, HeadConfig, Rule,
                      head_rules)


def _rename_in(state: Mapping[str, Tensor], rules: Sequence[Rule],
               expected: Mapping[str, torch.Size], where: str) -> Dict[str, Tensor]:
    """Apply ``rules`` (published → native), consuming every key of ``state`` and checking each
    shape against ``expected``."""
    remaining = dict(state)
    native: Dict[str, Tensor] = OrderedDict()
    for name, published, how in rules:
        keys = published if isinstance(published, list) else [published]
        missing = [k for k in keys if k not in remaining]
        if missing:
            raise KeyError(f"missing key '{missing[0]}' in the {where} (needed for {name}; "
                           f"{len(missing)} missing for it in all)")
        tensors = [remaining.pop(k) for k in keys]
        want = tuple(expected[name])
        per_key = want[1:] if how == STACK else () if how == SHARED_COUNTER else want
        for key, tensor in zip(keys, tensors):
            if tuple(tensor.shape) != per_key:
                raise ValueError(f"key '{key}' in the {where}: expected shape {list(per_key)}, "
                                 f"got {list(tensor.shape)}")
        if how == STACK:
            native[name] = torch.stack(tensors)
        elif how == SHARED_COUNTER:
            native[name] = tensors[0].expand(want).clone()
        else:
            native[name] = tensors[0]
    if remaining:
        keys = sorted(remaining)
        raise KeyError(f"unexpected key(s) in the {where}: {keys[:8]}"
                       + (f" and {len(keys) - 8} more" if len(keys) > 8 else ""))
    return native


def _rename_out(native: Mapping[str, Tensor], rules: Sequence[Rule]) -> Dict[str, Tensor]:
    """Apply ``rules`` (native → published) in order; a run of ``STACK`` rules is written AU by
    AU, as the published module lists hold them."""
    out: Dict[str, Tensor] = OrderedDict()
    stacked: List[Tuple[List[str], Tuple[Tensor, ...]]] = []

    def flush():
        for au in range(len(stacked[0][0]) if stacked else 0):
            out.update((keys[au], parts[au].clone()) for keys, parts in stacked)
        stacked.clear()

    for name, published, how in rules:
        tensor = native[name].detach()
        if how == STACK:
            stacked.append((published, tensor.unbind(0)))
            continue
        flush()
        if how == SHARED_COUNTER:  # the published layer counts the batches of its busiest slot
            out[published] = tensor.max().clone()
        else:
            out[published] = tensor.clone()
    flush()
    return out


def to_native(head: Mapping[str, Tensor], source: str, config: HeadConfig,
              expected: Mapping[str, torch.Size]) -> Dict[str, Tensor]:
    """Rename a published head state dict to pyg_mefl's names, consuming every key and checking
    each shape against ``expected`` (the native state dict's shapes)."""
    return _rename_in(head, head_rules(source, config), expected, f"{source} checkpoint")


def to_published(native: Mapping[str, Tensor], source: str,
                 config: HeadConfig) -> Dict[str, Tensor]:
    """pyg_mefl's state dict renamed to the published ``source`` layout (fresh tensors)."""
    return _rename_out(native, head_rules(source, config))


def global_linear_to_native(state: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """The global linear block's published keys (``<prefix>.fc.*``, ``<prefix>.bn.*``) renamed to
    :class:`~pyg_mefl.LinearBlock`'s, strictly; sizes come from ``fc.weight``."""
    where = f"global linear block ({prefix})"
    weight = state.get(f"{prefix}.fc.weight")
    if weight is None:
        raise KeyError(f"missing key '{prefix}.fc.weight' in the {where}")
    if weight.dim() != 2:
        raise ValueError(f"key '{prefix}.fc.weight' in the {where}: expected a 2-D weight, "
                         f"got shape {list(weight.shape)}")
    out_channels = weight.shape[0]
    expected = {"lin.weight": weight.shape, "lin.bias": (out_channels,),
                "norm.num_batches_tracked": ()}
    expected.update((f"norm.{f}", (out_channels,)) for f in _BN_STATS)
    rules = [(native, f"{prefix}.{published}", how)
             for native, published, how in GLOBAL_LINEAR_RULES]
    return _rename_in(state, rules, expected, where)


def global_linear_to_published(native: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """A :class:`~pyg_mefl.LinearBlock` state dict under the published names at ``prefix``."""
    return _rename_out(native, [(n, f"{prefix}.{p}", how) for n, p, how in GLOBAL_LINEAR_RULES])
