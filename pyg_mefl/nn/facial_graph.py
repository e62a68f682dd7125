"""The facial graph generator of ANFL (docs/math.md §9): a directed kNN graph over each face's AU
nodes."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import EdgeIndex

METRICS = ("dots", "cosine")


def au_knn_graph(x: Tensor, k: int, batch: Optional[Tensor] = None,
                 metric: str = "dots") -> Tuple[EdgeIndex, Tensor]:
    r"""The facial graph generator (FGG) of `"Learning Multi-dimensional Edge Feature-based AU
    Relation Graph for Facial Action Unit Recognition" <https://arxiv.org/abs/2205.01782>`_:
    each face's directed kNN graph over its AU nodes, built from the detached node features
    (no gradient flows through the graph), with symmetrically normalised edge weights.

    With the similarity :math:`S = \mathbf{V}\mathbf{V}^{\top}` of a face's node features
    (``"dots"``; ``"cosine"`` uses L2-normalised rows), node :math:`i` takes as neighbours
    every :math:`j` with :math:`S_{ij} \geq` the :math:`k`-th largest value of row :math:`i`:
    itself when it qualifies, and more than :math:`k` nodes when values tie, as the published
    code does. Each neighbour gives an edge :math:`j \to i` of weight

    .. math::
        w_{j \to i} = \frac{1}{\sqrt{d_i d_j}}, \qquad d_i = |\{j : S_{ij} \geq
        \mathrm{top}_k(S_{i\cdot})\}|,

    the row degrees of the published :math:`D^{-1/2} A D^{-1/2}` normalisation. The graph can
    also serve as a kNN face graph for :class:`~pyg_mefl.MEFL`: pass one face's edges
    (e.g. from :func:`torch_geometric.utils.unbatch_edge_index`) to
    :func:`~pyg_mefl.face_graph` as ``edge_index``.

    Args:
        x (torch.Tensor): Node features, either :math:`(B, N, C)` (``B`` faces of ``N`` nodes)
            or :math:`(|\mathcal{V}|, C)` with ``batch``.
        k (int): Neighbours per node (``neighbor_num``: 4 for OpenGraphAU and BP4D, 3 for
            DISFA), at most the number of nodes per face.
        batch (torch.Tensor, optional): Face of each row of a 2-D ``x``, sorted, with the same
            number of nodes in every face (default: all rows are one face).
        metric (str): ``"dots"`` or ``"cosine"``. (default: ``"dots"``)

    Returns:
        ``(edge_index, edge_weight)``: a :class:`torch_geometric.EdgeIndex` over the flattened
        nodes (node ``i`` of face ``b`` is ``b * N + i``; row 0 source, row 1 target) sorted by
        target, so that it carries its CSC pointer (``edge_index.get_csc()``: node ``i`` has
        :math:`d_i` incoming edges, and a face's edges are contiguous), and the weights
        :math:`w_{j \to i}` :math:`(|\mathcal{E}|)`, without gradient.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    faces = _face_view(x, batch)
    num_faces, num_nodes, _ = faces.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_nodes:
        raise ValueError(f"k: expected an int in [1, {num_nodes}] (the number of nodes per "
                         f"face), got {k!r}")
    with torch.no_grad():
        features = faces.detach()
        if metric == "cosine":
            features = F.normalize(features, p=2, dim=-1)
        similarity = torch.bmm(features, features.transpose(1, 2))
        threshold = similarity.topk(k, dim=-1).values[..., -1:]
        adjacency = similarity >= threshold
        degree_rsqrt = adjacency.sum(dim=-1).to(faces.dtype).pow(-0.5).flatten()
        face, target, source = adjacency.nonzero(as_tuple=True)  # sorted by (face, target)
        offset = face * num_nodes
        target, source = offset + target, offset + source
        edge_weight = degree_rsqrt[target] * degree_rsqrt[source]
    num_total = num_faces * num_nodes
    edge_index = EdgeIndex(torch.stack([source, target]), sparse_size=(num_total, num_total),
                           sort_order="col")
    return edge_index, edge_weight


def _face_view(x: Tensor, batch: Optional[Tensor]) -> Tensor:
    """``x`` as ``[B, N, C]`` faces of equal size, or a :class:`ValueError` saying why not."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor [B, N, C] or [num_nodes, C], "
                        f"got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 3:
        if batch is not None:
            raise ValueError(f"batch: only for 2-D node features [num_nodes, C]; x has shape "
                             f"{list(x.shape)} (faces already stacked)")
        faces = x
    elif x.dim() != 2:
        raise ValueError(f"x: expected shape [B, N, C] or [num_nodes, C], got {list(x.shape)}")
    elif batch is None:
        faces = x.unsqueeze(0)
    else:
        if not isinstance(batch, Tensor) or batch.shape != (x.size(0),) \
                or batch.dtype != torch.long:
            raise ValueError(f"batch: expected a long tensor of shape [{x.size(0)}] (the face of "
                             f"each row of x), got {getattr(batch, 'shape', batch)!r}")
        sizes = torch.bincount(batch) if batch.numel() else batch.new_zeros(1)
        if bool((batch[1:] < batch[:-1]).any()) or bool((sizes != sizes[0]).any()):
            raise ValueError(f"batch: the kNN graph needs faces of equal size with their rows "
                             f"in face order; got {sizes.tolist()[:8]} nodes per face"
                             + ("" if bool((batch[1:] >= batch[:-1]).all()) else
                                " and unsorted face ids"))
        faces = x.view(sizes.numel(), -1, x.size(-1))
    if faces.size(1) == 0:
        raise ValueError(f"x: expected at least one node per face, got shape {list(x.shape)}")
    if not bool(torch.isfinite(faces).all()):
        raise ValueError("x: the node features hold NaN or infinity; no kNN graph can be built")
    return faces
