"""Property-based tests (hypothesis) of the AU graph builder, the slot norm and face batching."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from pyg_mefl import SlotBatchNorm, complete_au_graph, edge_slots, face_graph

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(num_aus=st.integers(1, 12), batch_size=st.integers(0, 5))
def test_complete_graph_is_complete_with_self_loops_per_face(num_aus, batch_size):
    edge_index = complete_au_graph(num_aus, batch_size)
    assert edge_index.shape == (2, batch_size * num_aus ** 2)
    source, target = edge_index
    assert torch.equal(source // num_aus, target // num_aus)  # never across faces
    pairs = set(zip(source.tolist(), target.tolist()))
    assert len(pairs) == edge_index.size(1)  # no duplicates, so every (j, i) pair exactly once
    local = edge_index % num_aus
    assert torch.equal(edge_slots(local, torch.arange(num_aus), num_aus),
                       torch.arange(num_aus ** 2).repeat(batch_size))


@FAST
@given(data=st.data(), num_slots=st.integers(1, 6), rows=st.integers(2, 20),
       width=st.integers(1, 5))
def test_slot_norm_equals_normalising_each_slot_alone(data, num_slots, rows, width):
    slot = torch.tensor(data.draw(st.lists(st.integers(0, num_slots - 1), min_size=rows,
                                           max_size=rows)))
    seed = data.draw(st.integers(0, 2 ** 16))
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(seed)) * 4 + 2
    out = SlotBatchNorm(num_slots)(x, slot)
    for s in slot.unique().tolist():
        block = x[slot == s]
        expected = (block - block.mean()) / torch.sqrt(block.var(unbiased=False) + 1e-5)
        torch.testing.assert_close(out[slot == s], expected, rtol=1e-4, atol=1e-4)


@FAST
@given(data=st.data(), vocabulary=st.integers(1, 10), faces=st.integers(1, 4))
def test_face_graphs_with_au_subsets_batch_with_consistent_offsets(data, vocabulary, faces):
    graphs, subsets = [], []
    for _ in range(faces):
        subset = data.draw(st.lists(st.integers(0, vocabulary - 1), min_size=1,
                                    max_size=vocabulary, unique=True))
        subsets.append(subset)
        graphs.append(face_graph(torch.zeros(2, 3), au_ids=subset,
                                 labels=torch.tensor(subset) % 2))
    batch = Batch.from_data_list(graphs)
    assert batch.tokens.shape == (faces, 2, 3)
    assert batch.au_id.tolist() == [a for s in subsets for a in s]
    source, target = batch.edge_index
    assert torch.equal(batch.batch[source], batch.batch[target])
    assert batch.edge_index.size(1) == sum(len(s) ** 2 for s in subsets)
    slots = edge_slots(batch.edge_index, batch.au_id, vocabulary)
    expected = [a * vocabulary + b for s in subsets for a in s for b in s]
    assert slots.tolist() == expected
    known = batch.edge_y >= 0
    assert torch.equal(batch.edge_y[known],
                       (2 * batch.y[target] + batch.y[source])[known])
