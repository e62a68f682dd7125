"""The AU graph builder, face graphs, and DataLoader batches against the tensor call."""
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from pyg_mefl import MEFL, complete_au_graph, face_graph, relation_labels


def test_complete_graph_reference_order_and_offsets():
    n, batch = 4, 3
    edge_index = complete_au_graph(n, batch)
    assert edge_index.shape == (2, batch * n * n) and edge_index.dtype == torch.long
    for b in range(batch):
        for i in range(n):
            for j in range(n):
                e = b * n * n + i * n + j
                assert edge_index[:, e].tolist() == [b * n + j, b * n + i]  # source j, target i


def test_face_graph_batches_like_the_complete_graph():
    graphs = [face_graph(torch.randn(5, 8), 3) for _ in range(4)]
    batch = Batch.from_data_list(graphs)
    assert torch.equal(batch.edge_index, complete_au_graph(3, 4))
    assert batch.tokens.shape == (4, 5, 8)
    assert batch.au_id.tolist() == [0, 1, 2] * 4


def test_relation_labels_and_unknowns():
    data = face_graph(torch.randn(2, 4), 3, labels=torch.tensor([1, 0, -1, 1, 0]))
    assert data.y.tolist() == [1, 0, -1] and data.y_sub.tolist() == [[1, 0]]
    # edge i*3+j: 2*y_i + y_j, -1 where an end is unknown
    assert data.edge_y.tolist() == [3, 2, -1, 1, 0, -1, -1, -1, -1]
    assert torch.equal(relation_labels(data.y, data.edge_index), data.edge_y)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_dataloader_batch_equals_tensor_call(training):
    torch.manual_seed(0)
    model = MEFL(16, num_main_aus=12, num_sub_aus=14, edge_head=True).train(training)
    tokens = torch.randn(5, 7, 16)
    loader = DataLoader([face_graph(t, 12) for t in tokens], batch_size=5, shuffle=False)
    batch = next(iter(loader))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from_tensor = model(tokens, return_edges=True)
    model.load_state_dict(state)  # same running statistics for the second call
    from_graphs = model(batch, return_edges=True)
    torch.testing.assert_close(from_graphs.probs, from_tensor.probs)
    torch.testing.assert_close(from_graphs.edge_attr.view(5, 144, 16), from_tensor.edge_attr)
    torch.testing.assert_close(from_graphs.edge_logits.view(5, 144, 4), from_tensor.edge_logits)


def test_single_data_object_is_accepted():
    torch.manual_seed(1)
    model = MEFL(8, num_main_aus=8, num_sub_aus=0).eval()
    tokens = torch.randn(4, 8)
    torch.testing.assert_close(model(face_graph(tokens, 8)), model(tokens.unsqueeze(0)))


def test_bad_graph_arguments_are_named():
    with pytest.raises(ValueError, match="num_aus"):
        complete_au_graph(0)
    with pytest.raises(ValueError, match=r"tokens: expected shape \[D, C\], got \[2, 3, 4\]"):
        face_graph(torch.randn(2, 3, 4), 3)
    with pytest.raises(ValueError, match="au_ids"):
        face_graph(torch.randn(2, 4), au_ids=[1, 1])
    with pytest.raises(ValueError, match="labels"):
        face_graph(torch.randn(2, 4), 3, labels=[1, 0])
