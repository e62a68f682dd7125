"""A user's mistake is a typed error that names the argument and the expectation."""
import pytest
import torch
import torch_geometric
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch_geometric.data import Batch

from pyg_mefl import MEFL, GatedGNNLayer, GraphLayout, face_graph
from pyg_mefl.utils.checks import check_edge_index, check_tokens, reads_values


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
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


def test_finite_tokens_whose_sum_overflows_are_accepted(model):
    tokens = torch.full((2, 3, 8), 3e38)  # finite, but their float32 sum is inf
    assert not torch.isfinite(tokens.sum())
    model(tokens)  # no ValueError: the check falls back to the values themselves


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
    data = face_graph(torch.randn(5, 8), 4)
    data.au_id = torch.tensor([0, -1, 2, 3])  # edited after the graph was built
    with pytest.raises(ValueError, match=r"data.au_id: expected 4 AU ids in \[0, 4\)"):
        model(data)


def test_value_checks_read_cpu_tensors_or_in_debug_mode_only():
    """Reading values on a GPU waits for the device: like PyG, value checks run there only in
    debug mode. Fake CUDA tensors (no GPU needed) raise at any read of their values."""
    assert reads_values(torch.zeros(2, dtype=torch.long))
    layout = GraphLayout(2, 2, True, True)
    with FakeTensorMode():
        edge_index = torch.zeros(2, 4, dtype=torch.long, device="cuda")
        batch = torch.zeros(2, dtype=torch.long, device="cuda")
        tokens = torch.zeros(2, 3, 8, device="cuda")
        assert not reads_values(edge_index)
        check_edge_index(edge_index, 2)
        check_tokens(tokens, 8)
        layout.check(edge_index, batch)
        with torch_geometric.debug():
            assert reads_values(edge_index)
            for check in (lambda: check_edge_index(edge_index, 2), lambda: check_tokens(tokens, 8),
                          lambda: layout.check(edge_index, batch)):
                with pytest.raises(DataDependentOutputException):
                    check()
        with pytest.raises(ValueError, match=r"tokens: expected shape \[B, D, 7\]"):
            check_tokens(tokens, 7)  # shapes are metadata: always checked


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


# ------------------------------------------------------------------------------------------------
# Beyond the shapes: empty batches, dtypes, node widths, directories

@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("edge_head", [False, True])
def test_empty_batch_gives_empty_outputs(training, edge_head):
    """A video frame without a face is a normal case: zero rows out, the model untouched."""
    model = MEFL(8, num_main_aus=4, num_sub_aus=2, sub_au_sources=[0, 3],
                 edge_head=edge_head).train(training)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert model(torch.randn(0, 5, 8)).shape == (0, 6)
    out = model(torch.randn(0, 5, 8), return_edges=True)
    assert out.probs.shape == (0, 6)
    assert out.edge_attr.shape == (0, 16, 8)
    assert (out.edge_logits.shape == (0, 16, 4)) if edge_head else out.edge_logits is None
    for key, value in model.state_dict().items():  # no running statistics moved
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_tokens_of_another_dtype_than_the_model(model, dtype):
    tokens = torch.randn(2, 3, 8).to(dtype)
    with pytest.raises(TypeError, match=rf"tokens: expected dtype torch.float32 \(the model's "
                                        rf"parameters\), got {dtype}"):
        model(tokens)
    data = face_graph(tokens[0], 4)
    with pytest.raises(TypeError, match=rf"data.tokens: expected dtype torch.float32 .*{dtype}"):
        model(data)
    assert model.double()(tokens.double()).dtype == torch.float64  # converted model: fine
    model.float()


def test_layer_node_features_of_the_wrong_width_or_dtype():
    layer = GatedGNNLayer(4, norm=None)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=r"x: expected shape \[num_nodes, 4\] \(in_channels\), "
                                         r"got \[3, 5\]"):
        layer(torch.randn(3, 5), edge_index, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"x: expected shape \[num_nodes, 4\].*got \[3\]"):
        layer(torch.randn(3), edge_index, torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 \(the layer's "
                                        r"parameters\), got torch.float64"):
        layer(torch.randn(3, 4, dtype=torch.float64), edge_index, torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"edge_attr: expected dtype torch.float32 \(the dtype "
                                        r"of x\), got torch.float16"):
        layer(torch.randn(3, 4), edge_index, torch.randn(2, 4).half())


def test_layer_mixed_dtypes_run_under_autocast():
    layer = GatedGNNLayer(4, norm=None)
    edge_index = torch.tensor([[0, 1], [1, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, edges = layer(torch.randn(3, 4), edge_index, torch.randn(2, 4).bfloat16())
    assert torch.isfinite(out.float()).all() and torch.isfinite(edges.float()).all()


def test_from_pretrained_on_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"is a directory; whole-model directories load "
                                                r"with FaceAUModel.from_pretrained"):
        MEFL.from_pretrained(tmp_path)
