"""The first GNN layer's edge projection E e computed by the GEM in factored form (face basis):
against the dense reference, the GEM's plain projection, and GatedGNNLayer's own lin_e."""
import pytest
import torch
from torch_geometric.data import Batch

from pyg_mefl.testing.pairs import make_pair, relative_error
from pyg_mefl import face_graph
from pyg_mefl.data import GraphLayout, complete_au_graph, edge_slots
from pyg_mefl.nn import GatedGNNLayer, GraphEdgeModel
from pyg_mefl.nn.fused import mefl as fused_mefl
from pyg_mefl.nn.fused.gem import graph_edge_model, uses_face_basis
from pyg_mefl.nn.fused.gnn import gated_gnn_layer
from test_mefl_equivalence import _grads_as_native

TOL = 1e-5


def _first_layer_edge_proj(model, monkeypatch):
    """Records whether MEFL's fast path hands the first GNN layer a precomputed E e."""
    seen = []

    def layer_step(layer, *args, **kwargs):
        if layer is model.gnn.layers[0]:
            seen.append(args[-1] is not None)
        return gated_gnn_layer(layer, *args, **kwargs)

    monkeypatch.setattr(fused_mefl, "gated_gnn_layer", layer_step)
    return seen


@pytest.mark.parametrize("num_aus,num_sub", [(27, 14), (12, 0), (8, 0), (5, 0)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("as_batch", [False, True], ids=["tensor", "batch"])
def test_mefl_matches_dense_reference(num_aus, num_sub, training, as_batch, monkeypatch):
    channels, num_tokens, faces = 18, 7, 3  # 7 tokens < 9 query channels: the face basis
    dense, model = make_pair(channels, num_aus, num_sub, "post", True, seed=num_aus)
    dense.train(training)
    model.train(training)
    seen = _first_layer_edge_proj(model, monkeypatch)
    tokens = torch.randn(faces, num_tokens, channels)
    x_ours, x_dense = tokens.clone().requires_grad_(), tokens.clone().requires_grad_()
    inputs = Batch.from_data_list([face_graph(t, num_aus) for t in x_ours]) if as_batch \
        else x_ours

    ours = model(inputs, return_edges=True)
    ref = dense(x_dense)
    assert seen == [True]
    edge_attr = ours.edge_attr.view(faces, num_aus ** 2, channels)
    edge_logits = ours.edge_logits.view(faces, num_aus ** 2, 4)
    assert relative_error(ours.probs, ref["probs"]) < TOL
    assert relative_error(edge_attr, ref["edge_attr"]) < TOL
    assert relative_error(edge_logits, ref["edge_logits"]) < TOL

    weights = torch.randn_like(ours.probs)
    ((ours.probs * weights).sum() + edge_attr.square().mean() + edge_logits.sum()).backward()
    ((ref["probs"] * weights).sum() + ref["edge_attr"].square().mean() +
     ref["edge_logits"].sum()).backward()
    assert relative_error(x_ours.grad, x_dense.grad) < TOL
    expected = _grads_as_native(model, dense)
    for name, param in model.named_parameters():
        sibling = expected.get(name.replace("bias", "weight"), expected[name])
        scale = max(float(expected[name].abs().max()), float(sibling.abs().max()))
        assert float((param.grad - expected[name]).abs().max()) <= TOL * scale, name
    for name, buffer in model.named_buffers():  # the reference's buffers, under our names
        if "running" in name or "num_batches" in name:
            assert torch.allclose(buffer.double(), expected[name].double(), rtol=TOL, atol=TOL), \
                name


def _gem_inputs(num_aus, faces, channels, num_tokens, dtype):
    tokens = torch.randn(faces, num_tokens, channels, dtype=dtype)
    node_tokens = torch.randn(faces * num_aus, num_tokens, channels, dtype=dtype)
    edge_index = complete_au_graph(num_aus, faces)
    au_id = torch.arange(num_aus).repeat(faces)
    batch = torch.arange(faces).repeat_interleave(num_aus)
    layout = GraphLayout(num_aus, num_aus, True, True)
    return tokens, node_tokens, edge_index, batch, edge_slots(edge_index, au_id, num_aus), layout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("norm", [True, False], ids=["slot-norm", "no-norm"])
def test_gem_factored_projection_matches_plain(dtype, training, norm):
    """The factored E e against edge_attr @ W^T of the same GEM: values, gradients of the
    inputs, the weight and the norm's affine, and the running statistics (updated once)."""
    num_aus, faces, channels = 5, 3, 14
    torch.manual_seed(0)
    factored = GraphEdgeModel(channels, num_aus ** 2 if norm else None).to(dtype)
    if norm:
        with torch.no_grad():
            factored.norm.weight.uniform_(0.5, 1.5)
            factored.norm.bias.normal_()
            factored.norm.running_mean.normal_()
            factored.norm.running_var.uniform_(0.5, 1.5)
    plain = GraphEdgeModel(channels, num_aus ** 2 if norm else None).to(dtype)
    plain.load_state_dict(factored.state_dict())
    factored.train(training)
    plain.train(training)
    inputs = _gem_inputs(num_aus, faces, channels, 5, dtype)
    assert uses_face_basis(factored, inputs[0], inputs[-1])
    weight = torch.randn(channels + 3, channels, dtype=dtype)  # also a non-square projection
    outputs, grads = [], []
    for model in (factored, plain):
        x, node_tokens = (t.clone().requires_grad_() for t in inputs[:2])
        w = weight.clone().requires_grad_()
        if model is factored:
            edge_attr, projected = graph_edge_model(model, x, node_tokens, *inputs[2:], project=w)
        else:
            edge_attr = model(x, node_tokens, *inputs[2:])
            projected = edge_attr @ w.t()
        outputs.append((edge_attr, projected))
        probe = torch.randn_like(projected, generator=torch.Generator().manual_seed(1))
        ((projected * probe).sum() + edge_attr.square().sum()).backward()
        grads.append([x.grad, node_tokens.grad, w.grad] +
                     ([model.norm.weight.grad, model.norm.bias.grad] if norm else []))
    tol = TOL if dtype == torch.float32 else 1e-10
    for ours, theirs in zip(outputs[0] + tuple(grads[0]), outputs[1] + tuple(grads[1])):
        assert relative_error(ours, theirs) < tol
    if norm:
        for name, buffer in factored.norm.named_buffers():
            assert torch.equal(buffer, dict(plain.norm.named_buffers())[name]), name


def test_gem_projection_without_face_basis_is_plain():
    num_aus, channels = 4, 10
    gem = GraphEdgeModel(channels, num_aus ** 2).eval()
    gem.face_basis = False
    inputs = _gem_inputs(num_aus, 2, channels, 6, torch.float32)
    weight = torch.randn(channels, channels)
    edge_attr, projected = graph_edge_model(gem, *inputs, project=weight)
    assert torch.equal(edge_attr, gem(*inputs))
    assert torch.equal(projected, edge_attr @ weight.t())


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "inference"])
def test_gnn_layer_edge_proj_replaces_lin_e(grad):
    num_aus, faces, channels = 4, 2, 8
    layer = GatedGNNLayer(channels, norm="slot", num_node_slots=num_aus,
                          num_edge_slots=num_aus ** 2).eval()
    edge_index = complete_au_graph(num_aus, faces)
    x = torch.randn(num_aus * faces, channels)
    edge_attr = torch.randn(edge_index.size(1), channels)
    slots = (torch.arange(num_aus).repeat(faces), torch.arange(num_aus ** 2).repeat(faces))
    layout = GraphLayout(num_aus, num_aus, True, True, True, True)
    with torch.set_grad_enabled(grad):
        expected = layer(x, edge_index, edge_attr, *slots, layout)
        given = gated_gnn_layer(layer, x, edge_index, edge_attr, *slots, layout,
                                edge_proj=layer.lin_e(edge_attr))
        wrong = gated_gnn_layer(layer, x, edge_index, edge_attr, *slots, layout,
                                edge_proj=torch.zeros_like(edge_attr))
    for ours, theirs in zip(given, expected):
        assert relative_error(ours, theirs) < TOL
    assert relative_error(wrong[1], expected[1]) > TOL  # edge_proj is what the layer uses


def test_mefl_bf16_autocast_uses_the_factored_projection(monkeypatch):
    dense, model = make_pair(18, 8, 0, "pre", True, seed=2)
    seen = _first_layer_edge_proj(model, monkeypatch)
    tokens = torch.randn(2, 7, 18)
    for training in (True, False):
        model.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(tokens, return_edges=True)
        assert torch.isfinite(out.probs).all() and torch.isfinite(out.edge_attr).all()
        assert out.probs.dtype == out.edge_attr.dtype == torch.float32  # as without it
    assert seen == [True, True]
