"""MEFL: AFG, GEM and the gated GNN with the similarity heads (docs/math.md §2-6)."""
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Linear, Module
from torch_geometric.data import Data

from ..data.graph import GraphLayout, complete_au_graph, edge_slots
from ..utils.checks import check_dtype, check_edge_index
from ..utils.registry import checkpoint_function
from . import fused
from .blocks import AUFeatureBlocks
from .fused import mefl as fused_mefl
from .gem import GraphEdgeModel
from .gnn import GatedGNN
from .similarity import face_inputs, init_au_head, similarity_scores


class MEFLOutput(NamedTuple):
    """What :meth:`MEFL.forward` returns with ``return_edges=True``.

    ``probs``: ``[B, num_main_aus + num_sub_aus]`` (NaN for AUs a face graph does not hold).
    ``edge_attr``: final edge features, ``[B, N*N, C]`` in the reference edge order for a tensor
    input, ``[E, C]`` aligned with ``batch.edge_index`` for a ``Data``/``Batch`` input.
    ``edge_logits``: relation logits of the edge head, shaped like ``edge_attr`` with 4 classes,
    or :obj:`None` without the edge head. (:class:`~pyg_mefl.FaceAUModel` with a stage-1 head
    returns :obj:`None` for both.)
    """
    probs: Tensor
    edge_attr: Optional[Tensor]
    edge_logits: Optional[Tensor]


class MEFL(Module):
    r"""Multi-dimensional edge feature learning (MEFL), stage 2 of `"Learning Multi-dimensional
    Edge Feature-based AU Relation Graph for Facial Action Unit Recognition"
    <https://arxiv.org/abs/2205.01782>`_, as PyG layers over an explicit AU graph.

    For each face: AU-specific token sets :math:`\mathbf{U}_i` (:class:`AUFeatureBlocks`), node
    features :math:`\mathbf{v}_i = \mathrm{mean}_d \mathbf{U}_i`, multi-dimensional edge
    features from the :class:`GraphEdgeModel`, ``num_layers`` :class:`GatedGNNLayer` with the
    per-slot norm, and the similarity head

    .. math::
        p_i = \cos\big(\mathbf{v}_i, \mathrm{ReLU}(\mathbf{s}_{a(i)})\big),

    sub AUs scored from their main node, and optionally a 4-class edge head on the final edges.

    Args:
        in_channels (int): Token width :math:`C`.
        num_main_aus (int): Size of the AU vocabulary (graph nodes). (default: :obj:`27`)
        num_sub_aus (int): Sub AUs scored from main nodes. (default: :obj:`14`)
        num_layers (int): Gated GNN layers. (default: :obj:`2`)
        residual (str): ``"post"`` (OpenGraphAU, mexca) or ``"pre"`` (ME-GraphAU).
        edge_head (bool): Add ME-GraphAU's ``Linear(C, 4)`` relation head. (default: :obj:`False`)
        au_names (list of str, optional): Output names, main then sub (default: the published
            names for 27, 12 and 8 AUs and 14 sub AUs).
        sub_au_sources (list of int, optional): Main AU index of each sub AU (default: the
            published mapping when ``num_sub_aus == 14``).
        dropout (float): Dropout before the AU blocks. (default: :obj:`0.0`)
        check_finite (bool): Refuse tokens holding NaN or infinity with a :class:`ValueError`
            (one reduction per call; set the attribute to :obj:`False` to skip it in tight
            loops). On the CPU, and on a GPU only in PyG's debug mode
            (``with torch_geometric.debug():``), since reading the result back would make every
            call wait for the device. (default: :obj:`True`)

    The body composes the parts (each with its reference body or its fast path,
    :mod:`pyg_mefl.nn.fused`); the fast path also joins them where one part's output feeds the
    next more cheaply in another form. In evaluation mode on the CPU, a tokens tensor of more
    than ``faces_per_chunk`` faces (an attribute, default 8) runs 8 faces at a time: faces do
    not interact in evaluation, and 8 was the fastest batch per face on a 2-core CPU
    (``benchmarks/README.md``). Set it to :obj:`None` to run every batch whole. Zero faces (a
    frame without a face) give outputs with zero rows.

    Shapes:
        - **input:** tokens :math:`(B, D, C)`, or a ``Data``/``Batch`` of :func:`face_graph`
        - **output:** probabilities :math:`(B, N + S)`, or :class:`MEFLOutput`
    """

    def __init__(self, in_channels: int, num_main_aus: int = 27, num_sub_aus: int = 14,
                 num_layers: int = 2, residual: str = "post", edge_head: bool = False,
                 au_names: Optional[Sequence[str]] = None,
                 sub_au_sources: Optional[Sequence[int]] = None, dropout: float = 0.0,
                 check_finite: bool = True):
        super().__init__()
        self.check_finite = check_finite
        self.faces_per_chunk: Optional[int] = 8
        init_au_head(self, in_channels, num_main_aus, num_sub_aus, au_names, sub_au_sources,
                     num_layers=(num_layers, 1))
        self.afg = AUFeatureBlocks(num_main_aus, in_channels, dropout)
        self.gem = GraphEdgeModel(in_channels, num_edge_slots=num_main_aus ** 2)
        self.gnn = GatedGNN(in_channels, num_layers, norm="slot", num_node_slots=num_main_aus,
                            num_edge_slots=num_main_aus ** 2, residual=residual)
        self.edge_head = Linear(in_channels, 4) if edge_head else None
        self.reset_parameters()

    @property
    def residual(self) -> str:
        return self.gnn.layers[0].residual

    def reset_parameters(self) -> None:
        self.afg.reset_parameters()
        self.gem.reset_parameters()
        self.gnn.reset_parameters()
        torch.nn.init.xavier_uniform_(self.main_sc)
        if self.sub_sc is not None:
            torch.nn.init.xavier_uniform_(self.sub_sc)
        if self.edge_head is not None:
            self.edge_head.reset_parameters()

    def forward(self, x: Union[Tensor, Data],
                return_edges: bool = False) -> Union[Tensor, MEFLOutput]:
        chunk = self.faces_per_chunk
        if isinstance(x, Tensor) and not self.training and chunk and x.dim() == 3 \
                and x.size(0) > chunk and x.device.type == "cpu":
            return self._in_chunks(x, chunk, return_edges)
        tokens, au_id, edge_index, batch, layout = self._graph_inputs(x)
        num_faces = tokens.size(0)
        if num_faces == 0:  # e.g. a video frame without a face
            return self._empty_output(tokens, isinstance(x, Tensor), return_edges)
        if fused.is_enabled():
            node_x, edge_attr = fused_mefl.mefl_nodes_and_edges(self, tokens, au_id, edge_index,
                                                                batch, layout)
        else:
            node_tokens = self.afg(tokens, au_id, batch, layout)               # U_i
            edge_slot = edge_slots(edge_index, au_id, self.num_main_aus)
            edge_attr = self.gem(tokens, node_tokens, edge_index, batch, edge_slot, layout)
            node_x, edge_attr = self.gnn(node_tokens.mean(dim=1), edge_index, edge_attr, au_id,
                                         edge_slot, layout)
        probs = similarity_scores(node_x, au_id, batch, num_faces, self.main_sc, self.sub_sc,
                                  self.sub_au_sources)
        if not return_edges:
            return probs
        edge_logits = self.edge_head(edge_attr) if self.edge_head is not None else None
        if isinstance(x, Tensor):
            edge_attr = edge_attr.view(num_faces, -1, edge_attr.size(-1))
            edge_logits = None if edge_logits is None else edge_logits.view(num_faces, -1, 4)
        return MEFLOutput(probs, edge_attr, edge_logits)

    def _graph_inputs(self, x: Union[Tensor, Data]
                      ) -> Tuple[Tensor, Tensor, Tensor, Tensor, GraphLayout]:
        """Tokens, AU ids, edges and face of each node, and the graph's structural facts: those
        of the complete AU graph for a tensor, those ``face_graph`` recorded for a ``Data``
        (checked against the indices outside compiled code)."""
        tokens, au_id, batch = face_inputs(x, self.in_channels, self.num_main_aus,
                                           self.check_finite, "MEFL")
        check_dtype(tokens, self.main_sc.dtype, "tokens" if isinstance(x, Tensor)
                    else "data.tokens", "the model's parameters")
        if isinstance(x, Tensor):
            num_aus = self.num_main_aus
            return (tokens, au_id, complete_au_graph(num_aus, tokens.size(0), tokens.device),
                    batch, GraphLayout(num_aus, num_aus, True, True, True, True))
        check_edge_index(x.edge_index, au_id.size(0), "data.edge_index")
        layout = GraphLayout.of_batch(getattr(x, "graph_layout", None) or [])
        if not torch.compiler.is_compiling():
            layout.check(x.edge_index, batch, "data.graph_layout", au_id)
        return tokens, au_id, x.edge_index, batch, layout

    def _in_chunks(self, tokens: Tensor, chunk: int,
                   return_edges: bool) -> Union[Tensor, MEFLOutput]:
        """Evaluation of ``tokens`` ``chunk`` faces at a time (faces are independent there)."""
        parts = [self.forward(part, return_edges) for part in tokens.split(chunk)]
        if not return_edges:
            return torch.cat(parts)
        return MEFLOutput(*(None if field[0] is None else torch.cat(field)
                            for field in zip(*parts)))

    def _empty_output(self, tokens: Tensor, dense: bool,
                      return_edges: bool) -> Union[Tensor, MEFLOutput]:
        """The outputs of zero faces: ``[0, N + S]`` probabilities, and with ``return_edges``
        edge features (and logits) with zero rows, shaped as for a non-empty input."""
        probs = tokens.new_zeros(0, self.num_main_aus + self.num_sub_aus)
        if not return_edges:
            return probs
        shape = (0, self.num_main_aus ** 2) if dense else (0,)
        edge_attr = tokens.new_zeros(shape + (self.in_channels,))
        edge_logits = None if self.edge_head is None else tokens.new_zeros(shape + (4,))
        return MEFLOutput(probs, edge_attr, edge_logits)

    @classmethod
    def from_pretrained(cls, checkpoint, source: Optional[str] = None) -> "MEFL":
        r"""A MEFL with the weights of a published checkpoint (docs/math.md §8), loaded strictly.

        Args:
            checkpoint (str, os.PathLike or Mapping): A file (read with
                ``torch.load(..., weights_only=True)``) or a state dict: a whole-model
                checkpoint (the head under ``head.``) or the head's own state dict, optionally
                wrapped as ``{"state_dict": ...}`` and with ``module.`` prefixes.
            source (str, optional): ``"mexca"``, ``"opengraphau"`` or ``"me-graphau"``;
                detected from the key names if :obj:`None`.

        Sizes, sub AUs, the edge head, the residual variant and the AU names come from the
        checkpoint and its layout. Every head key must be used and every parameter and buffer
        filled: a missing or unexpected key raises :class:`KeyError`, a wrong shape
        :class:`ValueError`, each naming the key. A missing file raises
        :class:`FileNotFoundError`, an unreadable one :class:`ValueError`. The rest of a
        whole-model checkpoint is kept in ``model.checkpoint`` (:class:`CheckpointParts`): the
        global linear block as a :class:`LinearBlock` to run on the backbone tokens before the
        model, and the backbone tensors (reported in one log line).
        """
        return checkpoint_function("MEFL.from_pretrained")(checkpoint, source, cls)

    def to_published_state_dict(self, layout: str, whole_model: bool = False) -> dict:
        """The weights under the names of a published ``layout`` (``"mexca"``,
        ``"opengraphau"``, ``"me-graphau"``), as fresh tensors. With ``whole_model``, head keys
        get the ``head.`` prefix and the global linear block and backbone tensors of
        ``self.checkpoint`` (if the model was loaded from a whole-model checkpoint) are added.
        Raises :class:`ValueError` if the layout cannot hold the model (sub AUs in ME-GraphAU,
        an edge head in mexca/OpenGraphAU, a residual variant other than the layout's)."""
        return checkpoint_function("MEFL.to_published_state_dict")(self, layout, whole_model)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, num_main_aus={self.num_main_aus}, "
                f"num_sub_aus={self.num_sub_aus}, residual={self.residual!r}, "
                f"edge_head={self.edge_head is not None})")

