r"""The fast paths of the layers, behind one switch.

Each layer of :mod:`pyg_mefl.nn` has a short reference body that writes its equation in PyG's
idiom (``message`` / ``edge_update`` over ``edge_index``). The functions of this package compute
the same numbers faster: they choose their kernels from the graph's
:class:`~pyg_mefl.data.GraphLayout` (complete AU graphs, uniform in-degree, every AU in order)
instead of reading index values, fold the linear maps that commute with the attention and the
norms, and run inference in place. A layer enters them when :func:`is_enabled` holds:

.. code-block:: python

    from pyg_mefl.nn import fused

    with fused.reference_paths():   # every layer runs its reference body
        probs = model(tokens)

The fast paths call a few private torch operators (``torch._softmax(out=)``,
``torch.native_batch_norm`` and ``aten`` backward kernels). If this torch lacks one of them, the
layers run their reference bodies (:func:`available`).
"""
import contextlib
import warnings
from typing import Iterator

import torch



def _private_operators_run() -> bool:
    """Whether this torch has the private operators the fast paths call (tried on tiny
    tensors)."""
    try:
        x = torch.zeros(2, 2)
        torch._softmax(x, -1, False, out=torch.empty_like(x))
        out, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
        torch.ops.aten.native_batch_norm_backward(x, x, None, None, None, mean, invstd, True,
                                                  1e-5, [True, False, False])
        torch.ops.aten.threshold_backward(x, x, 0)
        torch.ops.aten.sigmoid_backward.grad_input(x, x, grad_input=torch.empty_like(x))
    except (AttributeError, RuntimeError, TypeError) as error:
        warnings.warn(f"pyg_mefl: this torch lacks an operator of the fast paths ({error}); "
                      f"the layers run their reference bodies", RuntimeWarning)
        return False
    return True


_available = _private_operators_run()
_enabled = True


def available() -> bool:
    """Whether this torch runs the private operators the fast paths call (tried on import)."""
    return _available


def is_enabled() -> bool:
    """Whether the layers take their fast paths (the default), rather than their reference
    bodies (inside :func:`reference_paths`, or where this torch cannot run them)."""
    return _enabled and _available


def set_enabled(enabled: bool) -> None:
    """Turn the fast paths on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def reference_paths() -> Iterator[None]:
    """Run every layer's reference body inside the block (equivalence tests run both ways)."""
    previous = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


__all__ = ["available", "is_enabled", "reference_paths", "set_enabled"]
