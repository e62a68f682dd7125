"""Action-unit names of the published MEFL models (docs/math.md §6), in output order."""
from typing import List, Optional, Sequence, Tuple

OPENGRAPHAU_MAIN_AUS: Tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14",
    "AU15", "AU16", "AU17", "AU18", "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26",
    "AU27", "AU32", "AU38", "AU39",
)
OPENGRAPHAU_SUB_AUS: Tuple[str, ...] = (
    "AUL1", "AUR1", "AUL2", "AUR2", "AUL4", "AUR4", "AUL6", "AUR6", "AUL10", "AUR10",
    "AUL12", "AUR12", "AUL14", "AUR14",
)
# Main-AU index that scores each sub AU. The published mapping scores L12/R12 from index 8,
# which is AU11 rather than AU12; it is kept because published checkpoints were trained with it.
OPENGRAPHAU_SUB_SOURCES: Tuple[int, ...] = (0, 0, 1, 1, 2, 2, 4, 4, 7, 7, 8, 8, 11, 11)

BP4D_AUS: Tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24",
)
DISFA_AUS: Tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")

_DEFAULT_MAIN = {27: OPENGRAPHAU_MAIN_AUS, 12: BP4D_AUS, 8: DISFA_AUS}


def default_au_names(num_main_aus: int, num_sub_aus: int = 0) -> List[str]:
    """Names in output order: the published lists for 27, 12 and 8 main AUs and the 14 sub AUs,
    ``"AU#k"`` placeholders otherwise."""
    main = _DEFAULT_MAIN.get(num_main_aus, tuple(f"AU#{k}" for k in range(num_main_aus)))
    sub = (OPENGRAPHAU_SUB_AUS if num_sub_aus == 14
           else tuple(f"sub#{k}" for k in range(num_sub_aus)))
    return list(main) + list(sub)


def check_au_names(au_names: Optional[Sequence[str]], expected: int) -> Optional[List[str]]:
    if au_names is None:
        return None
    names = list(au_names)
    if len(names) != expected:
        raise ValueError(f"au_names: expected {expected} names (main then sub AUs), got "
                         f"{len(names)}")
    if len(set(names)) != len(names):
        raise ValueError(f"au_names: names must be unique, got {names}")
    return names
