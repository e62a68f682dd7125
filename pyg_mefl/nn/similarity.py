"""What the stage-1 (:class:`~pyg_mefl.ANFL`) and stage-2 (:class:`~pyg_mefl.MEFL`) heads share:
their inputs (tokens or face graphs), the sub-AU mapping and the similarity head
(docs/math.md §6)."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module, Parameter
from torch_geometric.data import Data

from ..data.aus import OPENGRAPHAU_SUB_SOURCES, check_au_names, default_au_names
from ..utils.checks import check_tokens, index_bounds


def init_au_head(head: Module, in_channels: int, num_main_aus: int, num_sub_aus: int,
                 au_names: Optional[Sequence[str]], sub_au_sources: Optional[Sequence[int]],
                 **other_sizes: Tuple[int, int]) -> None:
    """Check a head's sizes (``other_sizes``: name to ``(value, minimum)``) and give it what
    its AU outputs need: ``in_channels``, ``num_main_aus``, ``num_sub_aus``, ``au_names``, the
    ``sub_au_sources`` buffer and the (uninitialised) prototypes ``main_sc``, ``sub_sc``."""
    sizes = dict(in_channels=(in_channels, 2), num_main_aus=(num_main_aus, 1),
                 num_sub_aus=(num_sub_aus, 0), **other_sizes)
    for name, (value, low) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    head.in_channels = in_channels
    head.num_main_aus = num_main_aus
    head.num_sub_aus = num_sub_aus
    head.au_names = (check_au_names(au_names, num_main_aus + num_sub_aus)
                     or default_au_names(num_main_aus, num_sub_aus))
    head.register_buffer("sub_au_sources",
                         sub_au_index(num_main_aus, num_sub_aus, sub_au_sources),
                         persistent=False)
    head.main_sc = Parameter(torch.empty(num_main_aus, in_channels))
    head.sub_sc = Parameter(torch.empty(num_sub_aus, in_channels)) if num_sub_aus else None


def sub_au_index(num_main_aus: int, num_sub_aus: int,
                 sub_au_sources: Optional[Sequence[int]]) -> Tensor:
    """The main AU index that scores each sub AU (default: the published mapping of the 14 sub
    AUs), checked against the head's sizes."""
    if sub_au_sources is None:
        if num_sub_aus not in (0, 14):
            raise ValueError(f"sub_au_sources: required for num_sub_aus={num_sub_aus} "
                             f"(the published mapping covers 14 sub AUs)")
        sub_au_sources = OPENGRAPHAU_SUB_SOURCES[:num_sub_aus]
    sub_au_sources = list(sub_au_sources)
    if len(sub_au_sources) != num_sub_aus or not all(
            0 <= s < num_main_aus for s in sub_au_sources):
        raise ValueError(f"sub_au_sources: expected {num_sub_aus} main AU indices in "
                         f"[0, {num_main_aus}), got {sub_au_sources}")
    return torch.tensor(sub_au_sources, dtype=torch.long)


def face_inputs(x: Union[Tensor, Data], in_channels: int, num_main_aus: int,
                check_finite: bool, owner: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``(tokens, au_id, batch)`` of a head's input: tokens ``[B, D, C]`` (every face holds all
    ``num_main_aus`` AUs, in order) or a :func:`~pyg_mefl.face_graph` ``Data``/``Batch``.
    Shapes and dtypes are always checked; the finiteness of the tokens (``check_finite``) and
    the range of ``au_id``, which read values, on the CPU or in PyG's debug mode only
    (:func:`~pyg_mefl.utils.checks.reads_values`): on a GPU the call never waits for the
    device."""
    if isinstance(x, Tensor):
        check_tokens(x, in_channels, finite=check_finite)
        num_faces = x.size(0)
        au_id = torch.arange(num_main_aus, device=x.device).repeat(num_faces)
        batch = torch.arange(num_faces, device=x.device).repeat_interleave(num_main_aus)
        return x, au_id, batch
    if not isinstance(x, Data) or getattr(x, "tokens", None) is None \
            or getattr(x, "au_id", None) is None:
        raise TypeError(f"{owner}: expected a tokens tensor [B, D, C] or a face_graph "
                        f"Data/Batch (with tokens and au_id), got {type(x).__name__}")
    check_tokens(x.tokens, in_channels, "data.tokens", finite=check_finite)
    if not torch.compiler.is_compiling():  # Batch.num_nodes: a Python value dynamo cannot trace
        bounds = index_bounds(x.au_id)
        if x.au_id.shape != (x.num_nodes,) or bounds is not None and not (
                0 <= bounds[0] and bounds[1] < num_main_aus):
            raise ValueError(f"data.au_id: expected {x.num_nodes} AU ids in "
                             f"[0, {num_main_aus}) (num_main_aus)")
    batch = x.batch if getattr(x, "batch", None) is not None else \
        torch.zeros(x.num_nodes, dtype=torch.long, device=x.tokens.device)
    return x.tokens, x.au_id, batch


def cosine_to_prototype(x: Tensor, prototype: Tensor) -> Tensor:
    """``<normalize(x), normalize(ReLU(prototype))>`` over the last dimension, normalise-then-dot
    as published: a zero vector scores 0 instead of NaN."""
    return (F.normalize(x, dim=-1) * F.normalize(torch.relu(prototype), dim=-1)).sum(dim=-1)


def similarity_scores(node_x: Tensor, au_id: Tensor, batch: Tensor, num_faces: int,
                      main_sc: Tensor, sub_sc: Optional[Tensor],
                      sub_au_sources: Tensor) -> Tensor:
    r"""The similarity head :math:`p_i = \cos(\mathbf{v}_i, \mathrm{ReLU}(\mathbf{s}_{a(i)}))`
    of every node, placed at ``[face, AU]``, then the sub AUs scored from their main node's
    features against ``sub_sc``. AUs a face does not hold are NaN.

    Shapes:
        - **input:** ``node_x`` :math:`(|\mathcal{V}|, C)`, ``au_id`` and ``batch``
          :math:`(|\mathcal{V}|)`, ``main_sc`` :math:`(N, C)`, ``sub_sc`` :math:`(S, C)`
        - **output:** :math:`(B, N + S)`
    """
    num_aus = main_sc.size(0)
    slot = batch * num_aus + au_id
    # (index_fill_, not ``present[slot] = True``: on a GPU that assignment syncs with the host)
    present = torch.zeros(num_faces * num_aus, dtype=torch.bool, device=node_x.device)
    present = present.index_fill_(0, slot, True).view(num_faces, num_aus)
    main = node_x.new_zeros(num_faces * num_aus).index_put(
        (slot,), cosine_to_prototype(node_x, main_sc[au_id])).view(num_faces, -1)
    if sub_sc is not None:
        features = node_x.new_zeros(num_faces * num_aus, node_x.size(-1)).index_put(
            (slot,), node_x).view(num_faces, num_aus, -1)
        sub = cosine_to_prototype(features[:, sub_au_sources], sub_sc)
        main = torch.cat([main, sub], dim=1)
        present = torch.cat([present, present[:, sub_au_sources]], dim=1)
    return main.masked_fill(~present, float("nan"))
