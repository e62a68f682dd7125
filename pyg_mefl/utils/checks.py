"""Input checks that turn a user's mistake into a typed error naming the argument."""
from typing import Optional

import torch
from torch import Tensor


def _compiling() -> bool:
    return torch.compiler.is_compiling()


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
    and (if ``finite``) holds no NaN or infinity."""
    shape = "[B, D, C]" if rank == 3 else "[D, C]"
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name}: expected a tensor of shape {shape}, got {type(tokens).__name__}")
    if tokens.dim() != rank or (channels is not None and tokens.size(-1) != channels):
        want = shape if channels is None else shape.replace("C", str(channels))
        raise ValueError(f"{name}: expected shape {want}, got {list(tokens.shape)}")
    if not tokens.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {tokens.dtype}")
    if finite and not _compiling() and not bool(torch.isfinite(tokens).all()):
        count = int((~torch.isfinite(tokens)).sum())
        raise ValueError(f"{name}: {count} non-finite value(s) (NaN or inf); clean the input, or "
                         f"pass check_finite=False to skip this check")


def check_edge_index(edge_index, num_nodes: int, name: str = "edge_index") -> None:
    """``edge_index`` is a ``[2, E]`` long tensor with values in ``[0, num_nodes)``."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{name}: expected a [2, E] long tensor, got {type(edge_index).__name__}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"{name}: expected shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype != torch.long:
        raise TypeError(f"{name}: expected dtype torch.long, got {edge_index.dtype}")
    if edge_index.numel() and not _compiling():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0 or high >= num_nodes:
            raise ValueError(f"{name}: node indices must lie in [0, {num_nodes}), "
                             f"got values in [{low}, {high}]")


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
