"""AU graphs: the complete graph in the reference edge order, faces as PyG ``Data``, and the
structural facts of a graph decided where it is built (:class:`GraphLayout`)."""
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..utils.checks import check_edge_index, check_labels, check_tokens, reads_values


class GraphLayout(NamedTuple):
    r"""Structural facts of a graph, or of a batch of graphs, decided where the graph is built and
    carried with it (``data.graph_layout``), so that the layers choose their fast paths from
    Python values instead of reading index tensors on every call (no device-to-host sync, no
    graph break under :func:`torch.compile`).

    Attributes:
        nodes_per_graph (int, optional): ``n`` when node :math:`v` belongs to graph
            :math:`\lfloor v / n \rfloor` (``batch == arange(V) // n``).
        in_degree (int, optional): ``k`` when edge :math:`e` has target
            :math:`\lfloor e / k \rfloor`: edges sorted by target, ``k`` per node
            (:func:`uniform_in_degree`).
        within_graphs (bool): every edge joins two nodes of one graph.
        complete (bool): every graph is the complete graph over its ``nodes_per_graph`` nodes
            in the reference edge order (:func:`complete_au_graph`): edge :math:`e` runs from
            node :math:`n \lfloor e / n^2 \rfloor + (e \bmod n)` to node
            :math:`\lfloor e / n \rfloor`, so the source features of the edges are a broadcast
            of the face's node features and the per-edge products of a face form one block
            product.
        simple (bool): no edge appears twice (no multi-edges). With ``within_graphs`` and
            ``nodes_per_graph`` :math:`n`, edge :math:`j \to i` of graph :math:`g` then has its
            own row :math:`g n^2 + (i - g n) n + (j - g n)` of the complete graph's edges, so
            per-edge products with a graph-level operand run as one product per graph on that
            grid instead of gathering the operand for every edge.
        ids_in_order (bool): with ``nodes_per_graph`` :math:`n`, node :math:`v` has id
            :math:`v \bmod n` (``au_id`` is ``arange(n)`` in every graph: each graph holds every
            AU of an :math:`n`-AU vocabulary, in order), so a batch of complete graphs is laid
            out as a tokens tensor would be: the AU blocks and the slot norms take the same
            paths.
    """
    nodes_per_graph: Optional[int] = None
    in_degree: Optional[int] = None
    within_graphs: bool = False
    complete: bool = False
    simple: bool = False
    ids_in_order: bool = False

    @classmethod
    def of_batch(cls, layouts: Union["GraphLayout", Iterable["GraphLayout"]]) -> "GraphLayout":
        """The layout of PyG's concatenation of graphs with these layouts (``Batch`` keeps
        ``graph_layout`` as a list, one per graph): a fact holds if it holds in every graph with
        the same value. One layout is returned as it is."""
        if isinstance(layouts, GraphLayout):
            return layouts
        layouts = list(layouts)
        if not layouts or not all(isinstance(layout, GraphLayout) for layout in layouts):
            return cls()
        first = layouts[0]
        return cls(
            first.nodes_per_graph if all(other.nodes_per_graph == first.nodes_per_graph
                                         for other in layouts) else None,
            first.in_degree if all(other.in_degree == first.in_degree
                                   for other in layouts) else None,
            all(layout.within_graphs for layout in layouts),
            first.nodes_per_graph is not None and all(
                layout.complete and layout.nodes_per_graph == first.nodes_per_graph
                for layout in layouts),
            all(layout.simple for layout in layouts),
            first.nodes_per_graph is not None and all(
                layout.ids_in_order and layout.nodes_per_graph == first.nodes_per_graph
                for layout in layouts))

    def check(self, edge_index: Tensor, batch: Tensor, name: str = "graph_layout",
              node_id: Optional[Tensor] = None) -> None:
        """Raise a :class:`ValueError` naming ``name`` if ``edge_index``, ``batch`` or the node
        ids ``node_id`` (e.g. ``au_id``; not checked if :obj:`None`) break a fact this layout
        states (e.g. an ``edge_index`` changed after the graph was built). The check
        reads the index values, so, like the other value checks
        (:func:`~pyg_mefl.utils.checks.reads_values`), it runs on the CPU, and on a GPU only in
        PyG's debug mode (``with torch_geometric.debug():``); inside compiled code it is a
        no-op."""
        if not reads_values(edge_index):
            return
        num_edges = edge_index.size(1)
        broken = []
        if self.nodes_per_graph is not None and not torch.equal(
                batch, torch.arange(batch.numel(), device=batch.device) // self.nodes_per_graph):
            broken.append(f"nodes_per_graph={self.nodes_per_graph}")
        if self.in_degree is not None and not torch.equal(
                edge_index[1], torch.arange(num_edges, device=edge_index.device) // self.in_degree):
            broken.append(f"in_degree={self.in_degree}")
        if self.within_graphs and num_edges and not bool(
                (batch[edge_index[0]] == batch[edge_index[1]]).all()):
            broken.append("within_graphs=True")
        if self.complete and not torch.equal(edge_index, complete_au_graph(
                self.nodes_per_graph, batch.numel() // self.nodes_per_graph, edge_index.device)):
            broken.append("complete=True")
        if self.simple and not self.complete and not is_simple(edge_index, batch.numel()):
            broken.append("simple=True")
        if self.ids_in_order and node_id is not None and not torch.equal(
                node_id, torch.arange(node_id.numel(), device=node_id.device)
                % self.nodes_per_graph):
            broken.append("ids_in_order=True")
        if broken:
            raise ValueError(f"{name}: the graph no longer has {', '.join(broken)} (was its "
                             f"edge_index changed after it was built? rebuild it with face_graph, "
                             f"or set {name} to GraphLayout() to state no facts)")


def uniform_in_degree(edge_index: Tensor, num_nodes: int) -> Optional[int]:
    """``k`` if every one of the ``num_nodes`` nodes has in-degree ``k`` and the edges are sorted
    by target (edge ``e`` has target ``e // k``), as in the complete AU graph; :obj:`None`
    otherwise. Reads ``edge_index``: call it once, where the graph is built, and carry the answer
    (:class:`GraphLayout`)."""
    num_edges = edge_index.size(1)
    if num_nodes <= 0 or num_edges == 0 or num_edges % num_nodes:
        return None
    k = num_edges // num_nodes
    expected = torch.arange(num_edges, device=edge_index.device) // k
    return k if torch.equal(edge_index[1], expected) else None


def is_simple(edge_index: Tensor, num_nodes: int) -> bool:
    """Whether no edge of ``edge_index`` (over ``num_nodes`` nodes) appears twice. Reads
    ``edge_index``: call it where the graph is built (:class:`GraphLayout`'s ``simple``)."""
    pair = edge_index[0] * num_nodes + edge_index[1]
    return pair.unique().numel() == pair.numel()


def complete_au_graph(num_aus: int, batch_size: int = 1,
                      device: Optional[Union[str, torch.device]] = None) -> Tensor:
    r"""Complete directed graph with self-loops over ``num_aus`` nodes, ``batch_size`` times.

    Edge ``e = i * num_aus + j`` of each graph runs from source ``j`` to target ``i``
    (docs/math.md §4, the order of the published dense code); graph ``b`` is offset by
    ``b * num_aus`` nodes and ``b * num_aus**2`` edges, as PyG's ``Batch`` does.

    Returns:
        ``edge_index`` of shape ``[2, batch_size * num_aus**2]`` (row 0 source, row 1 target).
    """
    if not isinstance(num_aus, int) or num_aus < 1:
        raise ValueError(f"num_aus: expected a positive int, got {num_aus!r}")
    if not isinstance(batch_size, (int, torch.SymInt)) or batch_size < 0:
        raise ValueError(f"batch_size: expected a non-negative int, got {batch_size!r}")
    nodes = torch.arange(num_aus, device=device)
    target = nodes.repeat_interleave(num_aus)
    source = nodes.repeat(num_aus)
    offsets = (torch.arange(batch_size, device=device) * num_aus).repeat_interleave(num_aus ** 2)
    return torch.stack([source.repeat(batch_size), target.repeat(batch_size)]) + offsets


def edge_slots(edge_index: Tensor, au_id: Tensor, num_aus: int) -> Tensor:
    """Slot ``au_id[target] * num_aus + au_id[source]`` of each edge: the index of its per-slot
    statistics (docs/math.md §4-5), equal to the reference edge number inside a complete graph."""
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
        ``num_nodes``, ``graph_layout`` (:class:`GraphLayout`: the facts the layers' fast paths
        rely on; rebuild the graph rather than editing ``edge_index`` in place) and, with
        labels, ``y`` ``[N]``, ``y_sub`` ``[1, S]`` and the edge relation
        labels ``edge_y = 2 * y[target] + y[source]`` (``-1`` where either label is unknown).
    """
    device = None  # the tokens' device, where the nodes and the default edges are made
    if tokens is not None:
        check_tokens(tokens, None, rank=2)
        device = tokens.device
    if au_ids is None:
        if num_aus is None:
            raise ValueError("face_graph: give num_aus or au_ids")
        au_id = torch.arange(num_aus, device=device)
    else:
        au_id = torch.as_tensor(au_ids, dtype=torch.long, device=device).flatten()
        if num_aus is not None and num_aus != au_id.numel():
            raise ValueError(f"num_aus={num_aus} disagrees with len(au_ids)={au_id.numel()}")
        if au_id.numel() == 0 or bool((au_id < 0).any()) or au_id.unique().numel() != au_id.numel():
            raise ValueError(f"au_ids: expected distinct non-negative AU ids, got {au_id.tolist()}")
    num_nodes = au_id.numel()
    if edge_index is None:
        edge_index = complete_au_graph(num_nodes, device=device)
    check_edge_index(edge_index, num_nodes)
    in_degree = uniform_in_degree(edge_index, num_nodes)
    complete = in_degree == num_nodes and torch.equal(
        edge_index, complete_au_graph(num_nodes, device=edge_index.device))
    simple = complete or is_simple(edge_index, num_nodes)
    in_order = au_ids is None or torch.equal(au_id, torch.arange(num_nodes, device=device))
    layout = GraphLayout(num_nodes, in_degree, True, complete, simple, in_order)
    data = Data(tokens=None if tokens is None else tokens.unsqueeze(0), au_id=au_id,
                edge_index=edge_index, num_nodes=num_nodes, graph_layout=layout)
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
    """Co-occurrence class ``2 * y[target] + y[source]`` of each edge (docs/math.md §6); ``-1``
    where either label is unknown."""
    source, target = y[edge_index[0]], y[edge_index[1]]
    known = (source >= 0) & (target >= 0)
    return torch.where(known, 2 * target + source, torch.full_like(source, -1))
