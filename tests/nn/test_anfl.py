"""The stage-1 head (ANFL), its graph layer and the facial kNN graph against the dense reference
of SPEC §9 (``pyg_mefl.testing.anfl_reference``): outputs, gradients, BN statistics, ties, face
graphs."""
import pytest
import torch
from torch_geometric import EdgeIndex
from torch_geometric.data import Batch

from pyg_mefl.testing.anfl_reference import (DenseANFL, knn_adjacency,
                                             normalize_rows_and_columns, to_anfl_layout)
from pyg_mefl.testing.pairs import randomize_batchnorms, relative_error
from pyg_mefl import ANFL, ANFLLayer, au_knn_graph, face_graph
from pyg_mefl.pretrained import load_anfl_head

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
C, D, B = 18, 7, 3  # odd sizes: channels, tokens, faces
CONFIGS = [(27, 14, 4), (12, 0, 4), (8, 0, 3)]  # (main AUs, sub AUs, K): OpenGraphAU, BP4D, DISFA
CONFIG_IDS = ["27+14", "12", "8"]


def _layout(num_sub):
    return "opengraphau" if num_sub else "me-graphau"


def make_pair(num_aus, num_sub, k, metric="dots", seed=0, dtype=torch.float32):
    """A dense reference and an ANFL holding the same weights (random BN statistics)."""
    torch.manual_seed(seed)
    dense = DenseANFL(C, num_aus, num_sub, k, metric)
    randomize_batchnorms(dense, torch.Generator().manual_seed(seed))
    model = load_anfl_head(to_anfl_layout(dense.state_dict(), _layout(num_sub)),
                           _layout(num_sub), neighbor_num=k, metric=metric)
    return dense.to(dtype), model.to(dtype)


def _as_native(model, state, num_sub):
    """A dense-reference state dict (e.g. holding gradients) under ANFL's names."""
    return load_anfl_head(to_anfl_layout(state, _layout(num_sub)), _layout(num_sub),
                          neighbor_num=model.neighbor_num).state_dict()


@pytest.mark.parametrize("metric", ["dots", "cosine"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("num_aus,num_sub,k", CONFIGS, ids=CONFIG_IDS)
def test_outputs_gradients_and_statistics_match_dense(num_aus, num_sub, k, training, metric):
    dense, model = make_pair(num_aus, num_sub, k, metric, seed=num_aus)
    dense.train(training)
    model.train(training)
    tokens = torch.randn(B, D, C, generator=torch.Generator().manual_seed(1))
    x_ours, x_dense = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    ours, ref = model(x_ours), dense(x_dense)
    assert ours.shape == (B, num_aus + num_sub)
    assert relative_error(ours, ref) <= TOL

    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert relative_error(x_ours.grad, x_dense.grad) <= TOL
    state = dense.state_dict()
    state.update({name: p.grad for name, p in dense.named_parameters()})
    expected = _as_native(model, state, num_sub)
    for name, param in model.named_parameters():
        # The AU-block bias before a train-mode BN has zero gradient in exact arithmetic, so a
        # bias is measured on the scale of its layer's weight gradient.
        sibling = expected.get(name.replace("bias", "weight"), expected[name])
        scale = max(float(expected[name].abs().max()), float(sibling.abs().max()))
        assert float((param.grad - expected[name]).abs().max()) <= TOL * scale, name

    statistics = _as_native(model, dense.state_dict(), num_sub)
    for name, buffer in model.state_dict().items():
        if "running" in name or "num_batches" in name:
            assert torch.allclose(buffer.double(), statistics[name].double(), rtol=TOL,
                                  atol=TOL), name


@pytest.mark.parametrize("metric", ["dots", "cosine"])
def test_knn_graph_is_the_dense_normalised_adjacency(metric):
    x = torch.randn(4, 11, 6, generator=torch.Generator().manual_seed(3))
    for k in (1, 3, 11):
        edge_index, edge_weight = au_knn_graph(x, k, metric=metric)
        adjacency = normalize_rows_and_columns(knn_adjacency(x, k, metric))
        ours = torch.zeros(4 * 11, 4 * 11)
        ours[edge_index[1], edge_index[0]] = edge_weight  # row = target i, column = source j
        expected = torch.block_diag(*adjacency)
        assert torch.equal(ours != 0, expected != 0), k
        assert relative_error(ours, expected) <= 1e-6
        assert edge_index.size(1) == int((expected != 0).sum())  # no duplicate edges


def test_knn_graph_layout_sorted_by_target_with_csc_pointer():
    x = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(4))
    edge_index, edge_weight = au_knn_graph(x, 4)
    assert isinstance(edge_index, EdgeIndex) and edge_index.is_sorted_by_col
    assert edge_index.sparse_size() == (27, 27)
    target = edge_index.as_tensor()[1]
    assert bool((target[1:] >= target[:-1]).all())
    (colptr, _), _ = edge_index.get_csc()
    in_degree = torch.bincount(target, minlength=27)
    assert torch.equal(colptr.diff(), in_degree)
    # weights are 1 / sqrt(d_i d_j) with the row degree d_i = in-degree of target i
    source = edge_index.as_tensor()[0]
    assert relative_error(edge_weight, (in_degree[target] * in_degree[source]).float().rsqrt()) \
        <= 1e-6
    # edges stay inside their face
    assert torch.equal(source // 9, target // 9)


def test_ties_give_more_than_k_neighbours():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 6, generator=generator)
    x[:, 5] = x[:, 2]
    x[:, 6] = x[:, 2]  # three identical nodes: whoever takes one of them takes all three
    k = 2
    edge_index, _ = au_knn_graph(x, k)
    degree = torch.bincount(edge_index.as_tensor()[1], minlength=16)
    expected = knn_adjacency(x, k).sum(dim=-1).flatten().long()
    assert torch.equal(degree, expected)
    assert int(degree.max()) >= k + 2 and int(degree.min()) >= k
    assert bool((degree[[2, 5, 6, 10, 13, 14]] >= 3).all())  # the copies choose each other


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_head_with_tied_nodes_matches_dense(training):
    """Identical AU blocks give identical node features, hence tied similarities."""
    dense, _ = make_pair(12, 0, 4, seed=6)
    with torch.no_grad():
        for copy in (5, 9):
            dense.main_class_linears[copy].load_state_dict(dense.main_class_linears[3].state_dict())
    model = load_anfl_head(to_anfl_layout(dense.state_dict(), "me-graphau"), "me-graphau")
    dense.train(training)
    model.train(training)
    tokens = torch.randn(B, D, C, generator=torch.Generator().manual_seed(7))
    degree = knn_adjacency(torch.stack([b(tokens) for b in dense.main_class_linears], 1)
                           .mean(-2), 4).sum(-1)
    assert int(degree.max()) > 4  # the case under test happens
    assert relative_error(model(tokens), dense(tokens)) <= TOL


def test_graph_is_built_without_gradient():
    x = torch.randn(2, 6, 5, requires_grad=True)
    edge_index, edge_weight = au_knn_graph(x, 3, metric="cosine")
    assert not edge_weight.requires_grad and edge_weight.grad_fn is None
    layer = ANFLLayer(5, norm=None)
    out = layer(x.view(-1, 5), edge_index, edge_weight).sum()
    grad, = torch.autograd.grad(out, x)
    # the same layer on a constant copy of the graph gives the same gradient
    x2 = x.detach().clone().requires_grad_()
    out2 = layer(x2.view(-1, 5), edge_index.as_tensor().clone(), edge_weight.clone()).sum()
    grad2, = torch.autograd.grad(out2, x2)
    assert torch.equal(grad, grad2)


def test_batch_vector_gives_the_stacked_graph():
    x = torch.randn(3, 7, 4, generator=torch.Generator().manual_seed(8))
    batch = torch.arange(3).repeat_interleave(7)
    stacked = au_knn_graph(x, 3)
    flat = au_knn_graph(x.view(-1, 4), 3, batch)
    assert torch.equal(stacked[0].as_tensor(), flat[0].as_tensor())
    assert torch.equal(stacked[1], flat[1])
    single = au_knn_graph(x[0], 3)  # 2-D without batch: one face
    assert torch.equal(single[0].as_tensor(), stacked[0].as_tensor()[:, :single[1].numel()])


def test_knn_graph_bad_input_errors():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"batch: the kNN graph needs faces of equal size.*"
                                         r"\[4, 2\]"):
        au_knn_graph(x, 2, torch.tensor([0, 0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="unsorted face ids"):
        au_knn_graph(x, 2, torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 3\]"):
        au_knn_graph(x, 4, torch.tensor([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="metric: expected one of"):
        au_knn_graph(x, 2, metric="l1")
    with pytest.raises(ValueError, match="batch: only for 2-D"):
        au_knn_graph(x.view(2, 3, 4), 2, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or infinity"):
        au_knn_graph(torch.full((3, 4), float("nan")), 2)
    with pytest.raises(TypeError, match="floating-point"):
        au_knn_graph(torch.ones(3, 4, dtype=torch.long), 2)


@pytest.mark.parametrize("norm", [None, "batch"])
def test_layer_on_a_generic_graph_matches_its_equation(norm):
    """``ReLU(x + Norm(U x_i + sum_j w_ji V x_j))`` on an unsorted graph, with and without
    weights, against a dense adjacency."""
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(10, 6, generator=generator)
    edge_index = torch.randint(0, 10, (2, 25), generator=generator)
    edge_weight = torch.rand(25, generator=generator)
    layer = ANFLLayer(6, norm=norm)
    for weight in (edge_weight, None):
        adjacency = torch.zeros(10, 10).index_put_(
            (edge_index[1], edge_index[0]), torch.ones(25) if weight is None else weight,
            accumulate=True)
        inner = layer.lin_u(x) + adjacency @ layer.lin_v(x)
        if norm == "batch":
            inner = torch.nn.functional.batch_norm(inner, None, None, layer.norm.module.weight,
                                                   layer.norm.module.bias, training=True)
        expected = torch.relu(x + inner)
        assert relative_error(layer(x, edge_index, weight), expected) <= TOL


def test_layer_errors():
    layer = ANFLLayer(4, norm="slot", num_node_slots=3)
    x, edge_index = torch.randn(3, 4), torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="norm='slot' needs node_slot"):
        layer(x, edge_index)
    with pytest.raises(ValueError, match=r"edge_weight: expected shape \[2\]"):
        ANFLLayer(4)(x, edge_index, torch.ones(3))
    with pytest.raises(ValueError, match="norm: expected one of"):
        ANFLLayer(4, norm="layer")
    with pytest.raises(ValueError, match="num_node_slots"):
        ANFLLayer(4, norm="slot")


def test_constructor_errors():
    with pytest.raises(ValueError, match="neighbor_num: expected at most num_main_aus=3"):
        ANFL(8, 3, 0, neighbor_num=4)
    with pytest.raises(ValueError, match="metric: expected one of"):
        ANFL(8, 12, 0, metric="l2")
    with pytest.raises(ValueError, match="sub_au_sources: required for num_sub_aus=3"):
        ANFL(8, 12, 3)
    with pytest.raises(TypeError, match="ANFL: expected a tokens tensor"):
        ANFL(8, 12, 0)([1, 2])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_face_graphs_of_an_au_subset_match_the_dense_head_of_that_subset(training):
    """Faces holding AUs ``subset`` = the dense head built from those AUs' parameters; the AUs
    a face lacks (and their sub AUs) are NaN."""
    subset = [0, 2, 3, 7, 9, 11]
    dense_full, model = make_pair(27, 14, 4, seed=10)
    dense = DenseANFL(C, len(subset), 0, 4)
    with torch.no_grad():
        dense.main_sc.copy_(dense_full.main_sc[subset])
        for new, old in enumerate(subset):
            dense.main_class_linears[new].load_state_dict(
                dense_full.main_class_linears[old].state_dict())
        dense.gnn.U.load_state_dict(dense_full.gnn.U.state_dict())
        dense.gnn.V.load_state_dict(dense_full.gnn.V.state_dict())
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dense.gnn.bnv, name).copy_(getattr(dense_full.gnn.bnv, name)[subset])
    dense.train(training)
    model.train(training)
    tokens = torch.randn(B, D, C, generator=torch.Generator().manual_seed(11))
    graphs = Batch.from_data_list([face_graph(t, au_ids=subset) for t in tokens])
    probs = model(graphs)
    assert probs.shape == (B, 41)
    assert relative_error(probs[:, subset], dense(tokens)) <= TOL
    held = torch.zeros(41, dtype=torch.bool)
    held[subset] = True
    held[27:] = held[torch.tensor([0, 0, 1, 1, 2, 2, 4, 4, 7, 7, 8, 8, 11, 11])]
    assert torch.equal(~probs.isnan(), held.expand(B, -1))
    ragged = Batch.from_data_list([face_graph(tokens[0], au_ids=subset),
                                   face_graph(tokens[1], au_ids=subset[:5])])
    with pytest.raises(ValueError, match="faces of equal size"):
        model(ragged)


def test_zero_faces_give_zero_rows():
    model = ANFL(8, 27, 14)
    for training in (True, False):
        model.train(training)
        out = model(torch.zeros(0, 5, 8))
        assert out.shape == (0, 41) and out.dtype == torch.float32


def test_full_face_graphs_equal_tensor_input():
    _, model = make_pair(12, 0, 4, seed=12)
    tokens = torch.randn(B, D, C, generator=torch.Generator().manual_seed(13))
    graphs = Batch.from_data_list([face_graph(t, 12) for t in tokens])
    for training in (True, False):
        model.train(training)
        assert relative_error(model(graphs), model(tokens)) <= 1e-6


def test_float64_and_training_steps_keep_agreeing():
    dense, model = make_pair(8, 0, 3, seed=14, dtype=torch.float64)
    tokens = torch.randn(B, D, C, dtype=torch.float64)
    for training in (True, False):
        dense.train(training)
        model.train(training)
        assert relative_error(model(tokens), dense(tokens)) <= 1e-10
    dense, model = make_pair(12, 0, 4, seed=15)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (model, dense)]
    for step in range(3):
        tokens = torch.randn(4, D, C)
        for optimizer, out in zip(optimizers, (model(tokens), dense(tokens))):
            optimizer.zero_grad()
            out.sum().backward()
            optimizer.step()
    model.eval()
    dense.eval()
    tokens = torch.randn(2, D, C)
    assert relative_error(model(tokens), dense(tokens)) <= 1e-4
