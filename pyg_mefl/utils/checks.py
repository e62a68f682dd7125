"""Input checks that turn a user's mistake into a typed error naming the argument.

Checks of shapes, dtypes and types read only metadata and always run. Checks of *values* (index
ranges, finiteness) copy a result back to the host, which on an accelerator waits for the device
(a host sync on every call): like PyG, which validates index values only in its debug mode, they
run where :func:`reads_values` allows it."""
from typing import Optional, Tuple

import torch
import torch_geometric
from torch import Tensor


def reads_values(tensor: Tensor) -> bool:
    """Whether a check may read the values of ``tensor``: never inside compiled code (a host read
    cannot be traced), always on the CPU (where reading costs no sync), and on other devices
    (CUDA, ...) only in PyG's debug mode (``with torch_geometric.debug():``), so that the hot
    path of a model on a GPU never waits for the device. Outside it, bad indices on a GPU end in
    a device-side assert instead of a :class:`ValueError`."""
    if torch.compiler.is_compiling():
        return False
    return tensor.device.type == "cpu" or torch_geometric.is_debug_enabled()


def index_bounds(index: Tensor) -> Optional[Tuple[int, int]]:
    """``(min, max)`` of a non-empty ``index`` where :func:`reads_values` allows reading it,
    else :obj:`None` (nothing to check, or not checked)."""
    if not index.numel() or not reads_values(index):
        return None
    low, high = torch.aminmax(index)
    return int(low), int(high)


def check_dtype(tensor: Tensor, dtype: Optional[torch.dtype], name: str,
                expected_from: str) -> None:
    """``tensor`` has ``dtype`` (that of ``expected_from``), unless autocast is on for its device:
    autocast runs mixed dtypes by design."""
    if dtype is None or tensor.dtype == dtype or torch.is_autocast_enabled(tensor.device.type):
        return
    raise TypeError(f"{name}: expected dtype {dtype} ({expected_from}), got {tensor.dtype}; "
                    f"cast it with .to({dtype}) or convert the module with .to({tensor.dtype})")


def check_tokens(tokens, channels: Optional[int], name: str = "tokens", rank: int = 3,
                 finite: bool = True) -> None:
    """``tokens`` is a floating tensor of ``rank`` dimensions with ``channels`` in the last one,
    and (if ``finite``, and where :func:`reads_values` allows it: on the CPU, or in PyG's debug
    mode) holds no NaN or infinity."""
    shape = "[B, D, C]" if rank == 3 else "[D, C]"
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {shape}, got {type(tokens).__name__}")
    if tokens.dim() != rank or (channels is not None and tokens.size(-1) != channels):
        want = shape if channels is None else shape.replace("C", str(channels))
        raise ValueError(f"{name}: expected shape {want}, got {list(tokens.shape)}")
    if not tokens.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {tokens.dtype}")
    # a NaN or an infinity makes the sum non-finite, so a finite sum clears every value (one
    # reduction, ~10x faster than isfinite().all()); a non-finite sum may be an overflow of
    # finite values and is checked value by value
    if finite and reads_values(tokens) and not bool(torch.isfinite(tokens.sum())) \
            and not bool(torch.isfinite(tokens).all()):
        count = int((~torch.isfinite(tokens)).sum())
        raise ValueError(f"{name}: {count} non-finite value(s) (NaN or inf); clean the input, or "
                         f"pass check_finite=False to skip this check")


def check_edge_index(edge_index, num_nodes: int, name: str = "edge_index") -> None:
    """``edge_index`` is a ``[2, E]`` long tensor with values in ``[0, num_nodes)`` (the values
    are checked where :func:`reads_values` allows it: on the CPU, or in PyG's debug mode)."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{name}: expected a [2, E] long tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"{name}: expected dtype torch.long, got {edge_index.dtype}")
    bounds = index_bounds(edge_index)
    if bounds is not None and (bounds[0] < 0 or bounds[1] >= num_nodes):
        raise ValueError(f"{name}: node indices must lie in [0, {num_nodes}), "
                         f"got values in [{bounds[0]}, {bounds[1]}]")


def check_node_features(x, channels: int, dtype: Optional[torch.dtype] = None,
                        name: str = "x") -> None:
    """``x`` is a ``[num_nodes, channels]`` tensor of ``dtype`` (the layer's parameters)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a [num_nodes, {channels}] tensor, got "
                        f"{type(x).__name__}")
    if x.dim() != 2 or x.size(1) != channels:
        raise ValueError(f"{name}: expected shape [num_nodes, {channels}] (in_channels), got "
                         f"{list(x.shape)}")
    check_dtype(x, dtype, name, "the layer's parameters")


def check_edge_attr(edge_attr, num_edges: int, channels: int,
                    dtype: Optional[torch.dtype] = None, name: str = "edge_attr") -> None:
    """``edge_attr`` is ``[num_edges, channels]``, of ``dtype`` (the node features')."""
    if not isinstance(edge_attr, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(edge_attr).__name__}")
    if edge_attr.dim() != 2 or edge_attr.size(0) != num_edges or edge_attr.size(1) != channels:
        raise ValueError(f"{name}: expected shape [{num_edges}, {channels}] (one row per edge of "
                         f"edge_index), got {list(edge_attr.shape)}")
    check_dtype(edge_attr, dtype, name, "the dtype of x")


def check_labels(labels: Tensor, name: str = "labels") -> None:
    """AU labels are 1 (present), 0 (absent) or -1 (unknown)."""
    bad = ~((labels == 1) | (labels == 0) | (labels == -1))
    if bool(bad.any()):
        values = sorted(set(labels[bad].tolist()))[:5]
        raise ValueError(f"{name}: expected values in {{1, 0, -1}} (-1 = unknown), got {values}")
