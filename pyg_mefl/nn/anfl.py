"""ANFL: the stage-1 head, AFG -> facial kNN graph -> one graph layer -> similarity head
(docs/math.md §9)."""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import Linear, Module
from torch_geometric.data import Data
from torch_geometric.nn.conv import MessagePassing

from ..data.graph import GraphLayout
from ..utils.checks import check_edge_index
from ..utils.registry import checkpoint_function
from .blocks import AUFeatureBlocks
from .facial_graph import METRICS, au_knn_graph
from .norm import NORMS, apply_norm, make_norm
from .similarity import face_inputs, init_au_head, similarity_scores


class ANFLLayer(MessagePassing):
    r"""The graph layer of ANFL (AU relationship-aware node feature learning) from
    `"Learning Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action Unit
    Recognition" <https://arxiv.org/abs/2205.01782>`_, a residual GCN layer over the weighted
    facial graph of :func:`au_knn_graph`:

    .. math::
        \mathbf{x}'_i = \mathrm{ReLU}\Big(\mathbf{x}_i + \mathrm{Norm}\big(
        \mathbf{U}\mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} w_{j \to i}\,
        \mathbf{V}\mathbf{x}_j\big)\Big)

    with biased linear maps :math:`\mathbf{U}, \mathbf{V}` and sum aggregation. With
    ``norm="slot"`` and the AU id as the slot this is the published layer, whose
    ``BatchNorm1d(N)`` keeps one statistic per AU node.

    Args:
        in_channels (int): Node feature width :math:`C`.
        norm (str, optional): ``"slot"`` (the published per-slot :class:`SlotBatchNorm`),
            ``"batch"`` (PyG :class:`BatchNorm`, per channel, for generic graphs) or
            :obj:`None`. (default: ``"batch"``)
        num_node_slots (int, optional): Slots for ``norm="slot"`` (the number of AUs).
        **kwargs (optional): Additional arguments of :class:`MessagePassing`.

    Shapes:
        - **input:** ``x`` :math:`(|\mathcal{V}|, C)`, ``edge_index`` :math:`(2, |\mathcal{E}|)`,
          ``edge_weight`` :math:`(|\mathcal{E}|)` (optional, default 1), with ``norm="slot"``
          also ``node_slot`` :math:`(|\mathcal{V}|)`
        - **output:** :math:`(|\mathcal{V}|, C)`
    """

    def __init__(self, in_channels: int, norm: Optional[str] = "batch",
                 num_node_slots: Optional[int] = None, **kwargs):
        kwargs.setdefault("aggr", "sum")
        kwargs.setdefault("node_dim", 0)
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {NORMS}, got {norm!r}")
        self.in_channels = in_channels
        self.norm_kind = norm
        self.lin_u = Linear(in_channels, in_channels)
        self.lin_v = Linear(in_channels, in_channels)
        self.norm = make_norm(norm, in_channels, num_node_slots, "num_node_slots")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for lin in (self.lin_u, self.lin_v):
            lin.reset_parameters()  # the bias keeps torch's default init, as published
            torch.nn.init.normal_(lin.weight, 0.0, math.sqrt(2.0 / self.in_channels))
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Optional[Tensor] = None,
                node_slot: Optional[Tensor] = None) -> Tensor:
        if self.norm_kind == "slot" and node_slot is None:
            raise ValueError("ANFLLayer: norm='slot' needs node_slot")
        check_edge_index(edge_index, x.size(0))
        if edge_weight is not None and edge_weight.shape != (edge_index.size(1),):
            raise ValueError(f"edge_weight: expected shape [{edge_index.size(1)}] (one weight per "
                             f"edge of edge_index), got {list(edge_weight.shape)}")
        out = self.propagate(edge_index, vx=self.lin_v(x), edge_weight=edge_weight)
        out = apply_norm(self.norm, out + self.lin_u(x), node_slot)
        return torch.relu(x + out)

    def message(self, vx_j: Tensor, edge_weight: Optional[Tensor]) -> Tensor:
        return vx_j if edge_weight is None else edge_weight.unsqueeze(-1) * vx_j

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, norm={self.norm_kind!r})"


class ANFL(Module):
    r"""AU relationship-aware node feature learning (ANFL), the stage-1 head of `"Learning
    Multi-dimensional Edge Feature-based AU Relation Graph for Facial Action Unit Recognition"
    <https://arxiv.org/abs/2205.01782>`_ (OpenGraphAU, ME-GraphAU, ``mexca.video.anfl``), as
    PyG layers.

    For each face: AU-specific token sets :math:`\mathbf{U}_i` (:class:`AUFeatureBlocks`), node
    features :math:`\mathbf{v}_i = \mathrm{mean}_d \mathbf{U}_i`, the facial graph
    :func:`au_knn_graph` built from them without gradient, one :class:`ANFLLayer` with the
    per-slot norm, and the similarity head of :class:`MEFL`

    .. math::
        p_i = \cos\big(\mathbf{v}'_i, \mathrm{ReLU}(\mathbf{s}_{a(i)})\big),

    sub AUs scored from their main node. Published stage-1 checkpoints load with
    :meth:`from_pretrained`; stage-2 ones are :class:`MEFL` files.

    Args:
        in_channels (int): Token width :math:`C`.
        num_main_aus (int): Size of the AU vocabulary (graph nodes). (default: :obj:`27`)
        num_sub_aus (int): Sub AUs scored from main nodes. (default: :obj:`14`)
        neighbor_num (int): Neighbours :math:`K` per node in the facial graph (4 for
            OpenGraphAU and BP4D, 3 for DISFA). (default: :obj:`4`)
        metric (str): Node similarity of the facial graph, ``"dots"`` (every released model)
            or ``"cosine"``. (default: ``"dots"``)
        au_names (list of str, optional): Output names, main then sub (default: the published
            names for 27, 12 and 8 AUs and 14 sub AUs).
        sub_au_sources (list of int, optional): Main AU index of each sub AU (default: the
            published mapping when ``num_sub_aus == 14``).
        dropout (float): Dropout before the AU blocks. (default: :obj:`0.0`)
        check_finite (bool): Refuse tokens holding NaN or infinity with a :class:`ValueError`.
            (default: :obj:`True`)

    Shapes:
        - **input:** tokens :math:`(B, D, C)`, or a ``Data``/``Batch`` of :func:`face_graph`
          whose faces hold the same number of AUs (the graph's own ``edge_index`` is not used:
          ANFL builds the facial graph itself)
        - **output:** probabilities :math:`(B, N + S)` (NaN for AUs a face graph does not hold)
    """

    def __init__(self, in_channels: int, num_main_aus: int = 27, num_sub_aus: int = 14,
                 neighbor_num: int = 4, metric: str = "dots",
                 au_names: Optional[Sequence[str]] = None,
                 sub_au_sources: Optional[Sequence[int]] = None, dropout: float = 0.0,
                 check_finite: bool = True):
        super().__init__()
        init_au_head(self, in_channels, num_main_aus, num_sub_aus, au_names, sub_au_sources,
                     neighbor_num=(neighbor_num, 1))
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
        if neighbor_num > num_main_aus:
            raise ValueError(f"neighbor_num: expected at most num_main_aus={num_main_aus} "
                             f"(neighbours are chosen among a face's AU nodes), got {neighbor_num}")
        self.neighbor_num = neighbor_num
        self.metric = metric
        self.check_finite = check_finite
        self.afg = AUFeatureBlocks(num_main_aus, in_channels, dropout)
        self.gnn = ANFLLayer(in_channels, norm="slot", num_node_slots=num_main_aus)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.afg.reset_parameters()
        self.gnn.reset_parameters()
        torch.nn.init.xavier_uniform_(self.main_sc)
        if self.sub_sc is not None:
            torch.nn.init.xavier_uniform_(self.sub_sc)

    def forward(self, x: Union[Tensor, Data]) -> Tensor:
        tokens, au_id, batch = face_inputs(x, self.in_channels, self.num_main_aus,
                                           self.check_finite, "ANFL")
        num_faces = tokens.size(0)
        if num_faces == 0:  # e.g. a video frame without a face
            return tokens.new_zeros(0, self.num_main_aus + self.num_sub_aus)
        # a tensor: every face holds every AU in order
        layout = GraphLayout(self.num_main_aus, ids_in_order=True) if isinstance(x, Tensor) \
            else None
        node_x = self.afg(tokens, au_id, batch, layout).mean(dim=1)
        if isinstance(x, Tensor):  # every face holds all AUs: no batch vector to check
            edge_index, edge_weight = au_knn_graph(node_x.view(num_faces, self.num_main_aus, -1),
                                                   self.neighbor_num, metric=self.metric)
        else:
            edge_index, edge_weight = au_knn_graph(node_x, self.neighbor_num, batch, self.metric)
        node_x = self.gnn(node_x, edge_index, edge_weight, au_id)
        return similarity_scores(node_x, au_id, batch, num_faces, self.main_sc, self.sub_sc,
                                 self.sub_au_sources)

    @classmethod
    def from_pretrained(cls, checkpoint, source: Optional[str] = None, **overrides) -> "ANFL":
        r"""An ANFL with the weights of a published stage-1 checkpoint, loaded strictly.

        Args:
            checkpoint (str, os.PathLike or Mapping): A file (read with
                ``torch.load(..., weights_only=True)``) or a state dict: a whole-model
                checkpoint (the head under ``head.``) or the head's own state dict, optionally
                wrapped as ``{"state_dict": ...}`` and with ``module.`` prefixes.
            source (str, optional): ``"opengraphau"``, ``"me-graphau"`` or ``"mexca"``;
                detected from the key names if :obj:`None`.
            **overrides: ``neighbor_num``, ``metric``, ``au_names``, ``dropout`` or
                ``check_finite`` instead of the source's published values.

        Sizes, sub AUs, ``neighbor_num`` (4; ME-GraphAU DISFA: 3) and the AU names come from the
        checkpoint and its layout. Every head key must be used: a missing or unexpected key
        raises :class:`KeyError`, a wrong shape :class:`ValueError`, each naming the key; a
        stage-2 (MEFL) file raises :class:`KeyError` saying so. The rest of a whole-model
        checkpoint is kept in ``model.checkpoint`` (:class:`CheckpointParts`), as for
        :meth:`MEFL.from_pretrained`.
        """
        return checkpoint_function("ANFL.from_pretrained")(checkpoint, source, cls, **overrides)

    def to_published_state_dict(self, layout: str) -> dict:
        """The head's weights under the names of a published ``layout`` (``"opengraphau"``,
        ``"me-graphau"``, ``"mexca"``), in the published key order, as fresh tensors. Raises
        :class:`ValueError` if the layout cannot hold the model (sub AUs in ME-GraphAU, none in
        OpenGraphAU or mexca)."""
        return checkpoint_function("ANFL.to_published_state_dict")(self, layout)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, num_main_aus={self.num_main_aus}, "
                f"num_sub_aus={self.num_sub_aus}, neighbor_num={self.neighbor_num}, "
                f"metric={self.metric!r})")
