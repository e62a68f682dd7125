"""AU graphs: the complete graph in the reference edge order, and faces as PyG ``Data``."""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..utils.checks import check_edge_index, check_labels, check_tokens


def complete_au_graph(num_aus: int, batch_size: int = 1,
                      device: Optional[Union[str, torch.device]] = None) -> Tensor:
    r"""Complete directed graph with self-loops over ``num_aus`` nodes, ``batch_size`` times.

    Edge ``e = i * num_aus + j`` of each graph runs from source ``j`` to target ``i``
    (SPEC §4, the order of the published dense code); graph ``b`` is offset by
    ``b * num_aus`` nodes and ``b * num_aus**2`` edges, as PyG's ``Batch`` does.

    Returns:
        ``edge_index`` of shape ``[2, batch_size * num_aus**2]`` (row 0 source, row 1 target).
    """
    if not isinstance(num_aus, int) or num_aus < 1:
        raise ValueError(f"num_aus: expected a positive int, got {num_aus!r}")
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size: expected a non-negative int, got {batch_size!r}")
    nodes = torch.arange(num_aus, device=device)
    target = nodes.repeat_interleave(num_aus)
    source = nodes.repeat(num_aus)
    offsets = (torch.arange(batch_size, device=device) * num_aus).repeat_interleave(num_aus ** 2)
    return torch.stack([source.repeat(batch_size), target.repeat(batch_size)]) + offsets


def edge_slots(edge_index: Tensor, au_id: Tensor, num_aus: int) -> Tensor:
    """Slot ``au_id[target] * num_aus + au_id[source]`` of each edge: the index of its per-slot
    statistics (SPEC §4-5), equal to the reference edge number inside a complete graph."""
    return au_id[edge_index[1]] * num_aus + au_id[edge_index[0]]


def face_graph(tokens: Optional[Tensor], num_aus: Optional[int] = None,
               labels: Optional[Tensor] = None, *,
               au_ids: Optional[Union[Sequence[int], Tensor]] = None,
               edge_index: Optional[Tensor] = None) -> Data:
    r"""One face as a graph of AU nodes, ready for PyG's ``DataLoader``.

    Args:
        tokens: backbone tokens of the face, ``[D, C]``, or :obj:`None` for a graph whose tokens a
            backbone computes later from another attribute (e.g. ``data.image``).
        num_aus: number of AU nodes (AU ids ``0..num_aus-1``); give this or ``au_ids``.
        labels: optional AU labels (``1``, ``0``, ``-1`` unknown), one per node, optionally
            followed by the sub-AU labels.
        au_ids: ids of the AUs present, a subset of the model's AU vocabulary, in node order.
        edge_index: optional ``[2, E]`` graph over the nodes (default: complete, with
            self-loops, in the reference edge order).

    Returns:
        ``Data`` with ``tokens`` ``[1, D, C]`` (if given), ``au_id`` ``[N]``, ``edge_index``,
        ``num_nodes`` and, with labels, ``y`` ``[N]``, ``y_sub`` ``[1, S]`` and the edge relation
        labels ``edge_y = 2 * y[target] + y[source]`` (``-1`` where either label is unknown).
    """
    if tokens is not None:
        check_tokens(tokens, None, rank=2)
    if au_ids is None:
        if num_aus is None:
            raise ValueError("face_graph: give num_aus or au_ids")
        au_id = torch.arange(num_aus)
    else:
        au_id = torch.as_tensor(au_ids, dtype=torch.long).flatten()
        if num_aus is not None and num_aus != au_id.numel():
            raise ValueError(f"num_aus={num_aus} disagrees with len(au_ids)={au_id.numel()}")
        if au_id.numel() == 0 or bool((au_id < 0).any()) or au_id.unique().numel() != au_id.numel():
            raise ValueError(f"au_ids: expected distinct non-negative AU ids, got {au_id.tolist()}")
    num_nodes = au_id.numel()
    if edge_index is None:
        edge_index = complete_au_graph(num_nodes)
    check_edge_index(edge_index, num_nodes)
    data = Data(tokens=None if tokens is None else tokens.unsqueeze(0), au_id=au_id,
                edge_index=edge_index, num_nodes=num_nodes)
    if labels is not None:
        labels = torch.as_tensor(labels).flatten()
        check_labels(labels)
        labels = labels.long()
        if labels.numel() < num_nodes:
            raise ValueError(f"labels: expected at least {num_nodes} values (one per AU node), "
                             f"got {labels.numel()}")
        data.y = labels[:num_nodes]
        data.y_sub = labels[num_nodes:].unsqueeze(0)
        data.edge_y = relation_labels(data.y, edge_index)
    return data


def relation_labels(y: Tensor, edge_index: Tensor) -> Tensor:
    """Co-occurrence class ``2 * y[target] + y[source]`` of each edge (SPEC §6); ``-1`` where
    either label is unknown."""
    source, target = y[edge_index[0]], y[edge_index[1]]
    known = (source >= 0) & (target >= 0)
    return torch.where(known, 2 * target + source, torch.full_like(source, -1))
