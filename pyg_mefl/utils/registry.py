"""The bodies of checkpoint methods that a layer offers but a higher layer implements.

:meth:`pyg_mefl.MEFL.from_pretrained` and its kin are methods of the layers, but reading and
writing the published layouts is the work of the checkpoint loaders, which import the layers.
So that imports point one way only, a layer's method looks its body up here by name, and the
module that implements it registers it when it is imported (``import pyg_mefl`` imports them
all).
"""
from typing import Callable, Dict

_FUNCTIONS: Dict[str, Callable] = {}


def register_checkpoint_function(name: str, function: Callable) -> None:
    """Make ``function`` the body of the method ``name``.

    Args:
        name (str): The method, as ``"Class.method"`` (e.g. ``"MEFL.from_pretrained"``).
        function (callable): What the method calls, with the arguments it documents.

    Raises :class:`ValueError` if ``name`` already has another function: two implementations of
    one method would make the one used depend on the import order. Registering the same
    function again (a module imported twice) is allowed.
    """
    if not callable(function):
        raise TypeError(f"{name}: expected a callable, got {type(function).__name__}")
    held = _FUNCTIONS.get(name)
    if held is not None and _qualified_name(held) != _qualified_name(function):
        raise ValueError(f"{name}: already implemented by {_qualified_name(held)}, not "
                         f"registering {_qualified_name(function)}")
    _FUNCTIONS[name] = function


def checkpoint_function(name: str) -> Callable:
    """The function registered as the body of the method ``name`` (``"Class.method"``).

    Raises :class:`KeyError` naming the method if nothing registered it.
    """
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise KeyError(f"{name}: no implementation is registered; the checkpoint loaders "
                       f"register theirs when imported (import pyg_mefl does it)") from None


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"
