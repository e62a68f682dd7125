"""A user's mistake is a typed error that names the argument and the expectation."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from pyg_mefl import MEFL, GatedGNNLayer, face_graph


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MEFL(8, num_main_aus=4, num_sub_aus=0).eval()


@pytest.mark.parametrize("tokens,error,message", [
    (torch.randn(3, 8), ValueError, r"tokens: expected shape \[B, D, 8\], got \[3, 8\]"),
    (torch.randn(2, 3, 7), ValueError, r"tokens: expected shape \[B, D, 8\], got \[2, 3, 7\]"),
    (torch.ones(2, 3, 8, dtype=torch.long), TypeError, "tokens: expected a floating-point"),
    ([[0.0] * 8], TypeError, "expected a tokens tensor"),
])
def test_bad_tokens(model, tokens, error, message):
    with pytest.raises(error, match=message):
        model(tokens)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tokens_are_refused_unless_switched_off(model, bad):
    tokens = torch.randn(2, 3, 8)
    tokens[1, 2, 5] = bad
    with pytest.raises(ValueError, match=r"tokens: 1 non-finite value.*check_finite=False"):
        model(tokens)
    with pytest.raises(ValueError, match="data.tokens: 1 non-finite"):
        model(Batch.from_data_list([face_graph(t, 4, ) for t in tokens.nan_to_num()]).update(
            {"tokens": tokens}))
    model.check_finite = False
    try:
        assert torch.isfinite(model(tokens)[0]).all()  # the clean face is unaffected
    finally:
        model.check_finite = True


def test_bad_edge_index(model):
    tokens = torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"edge_index: node indices must lie in \[0, 4\), "
                                         r"got values in \[0, 4\]"):
        face_graph(tokens, 4, edge_index=torch.tensor([[0, 4], [1, 1]]))
    with pytest.raises(ValueError, match=r"edge_index: expected shape \[2, E\], got \[3, 2\]"):
        face_graph(tokens, 4, edge_index=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="edge_index: expected dtype torch.long"):
        face_graph(tokens, 4, edge_index=torch.zeros(2, 2, dtype=torch.int32))
    data = face_graph(tokens, 4)
    data.edge_index = data.edge_index + 1
    with pytest.raises(ValueError, match=r"data.edge_index: node indices must lie in \[0, 4\)"):
        model(data)


def test_au_ids_outside_the_vocabulary(model):
    with pytest.raises(ValueError, match=r"data.au_id: expected 2 AU ids in \[0, 4\)"):
        model(face_graph(torch.randn(5, 8), au_ids=[1, 6]))


def test_labels_outside_the_label_set():
    with pytest.raises(ValueError, match=r"labels: expected values in \{1, 0, -1\}.*\[2\]"):
        face_graph(torch.randn(5, 8), 3, labels=[1, 2, -1])


def test_edge_attr_mismatch_in_the_layer():
    layer = GatedGNNLayer(4, norm=None)
    x, edge_index = torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"edge_attr: expected shape \[2, 4\]"):
        layer(x, edge_index, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"edge_attr: expected shape \[2, 4\]"):
        layer(x, edge_index, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"edge_index: node indices must lie in \[0, 3\)"):
        layer(x, torch.tensor([[0, 3], [1, 2]]), torch.randn(2, 4))
