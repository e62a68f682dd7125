"""The graph facts of ``pyg_mefl/data/graph.py`` that turn the fast paths on: ``uniform_in_degree``
against hand-written edge lists (runs, gaps, uneven and interleaved targets), and the
``GraphLayout`` that ``face_graph`` records and ``GraphLayout.of_batch`` merges, against the
layouts expected of complete, sparse, shuffled, mixed and multigraph face graphs.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch
from torch_geometric.data import Batch

from pyg_mefl import GraphLayout, complete_au_graph, face_graph, uniform_in_degree


@pytest.mark.parametrize("target,num_nodes,expected", [
    ([0, 0, 1, 1, 2, 2], 3, 2),
    ([0, 1, 2, 3], 4, 1),
    ([0, 0, 1, 1, 2, 2], 4, None),  # node 3 receives nothing
    ([1, 1, 2, 2], 2, None),        # runs do not start at node 0
    ([0, 0, 1, 1, 1], 2, None),     # uneven runs
    ([1, 1, 0, 0], 2, None),        # not increasing
    ([0, 1, 0, 1], 2, None),        # interleaved
    ([], 3, None),
])
def test_uniform_in_degree(target, num_nodes, expected):
    target = torch.tensor(target, dtype=torch.long)
    edge_index = torch.stack([torch.zeros_like(target), target])
    assert uniform_in_degree(edge_index, num_nodes) == expected


def test_face_graph_records_its_layout():
    tokens = torch.randn(3, 4)
    assert face_graph(tokens, 5).graph_layout == GraphLayout(5, 5, True, True, True, True)
    sparse = face_graph(tokens, 3, edge_index=torch.tensor([[0, 1, 2], [1, 0, 0]]))
    assert sparse.graph_layout == GraphLayout(3, None, True, False, True, True)
    batch = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, 4)])
    assert GraphLayout.of_batch(batch.graph_layout) == GraphLayout(4, 4, True, True, True, True)
    # AU ids given: in order only if they are 0..n-1
    assert face_graph(tokens, au_ids=[0, 1, 2]).graph_layout.ids_in_order
    assert not face_graph(tokens, au_ids=[1, 0, 2]).graph_layout.ids_in_order
    mixed = Batch.from_data_list([face_graph(tokens, 3), face_graph(tokens, au_ids=[1, 0, 2])])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(3, 3, True, True, True, False)
    mixed = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, au_ids=[0, 2])])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(None, None, True, False, True)
    mixed = Batch.from_data_list([face_graph(tokens, 4), sparse])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(None, None, True, False, True)
    # every target keeps all 4 sources, in another order: uniform, but not the reference order
    shuffled = complete_au_graph(4).view(2, 4, 4).flip(2).reshape(2, -1)
    assert face_graph(tokens, 4, edge_index=shuffled).graph_layout == \
        GraphLayout(4, 4, True, False, True, True)
    mixed = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, 4,
                                                                   edge_index=shuffled)])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(4, 4, True, False, True, True)
    # an edge given twice: a multigraph, not simple
    twice = face_graph(tokens, 3, edge_index=torch.tensor([[0, 1, 0], [1, 0, 1]]))
    assert twice.graph_layout == GraphLayout(3, None, True, False, False, True)
    mixed = Batch.from_data_list([sparse, twice])
    assert GraphLayout.of_batch(mixed.graph_layout) == \
        GraphLayout(3, None, True, False, False, True)
