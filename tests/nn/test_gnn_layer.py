"""GatedGNNLayer on arbitrary graphs against a per-node loop written from SPEC §5."""
import pytest
import torch
import torch.nn.functional as F
from torch_geometric import EdgeIndex
from torch_geometric.data import Batch
from torch_geometric.nn import Sequential

from pyg_mefl import (GatedGNN, GatedGNNLayer, GraphLayout, SlotBatchNorm, complete_au_graph,
                      face_graph)
from pyg_mefl.nn import fused
from pyg_mefl.nn.fused import blocks as fused_blocks, gem as fused_gem, gnn as fused_gnn
from pyg_mefl.nn.fused import mefl as fused_mefl
from pyg_mefl.nn.fused.norm import add_relu_norm, norm_rows, norm_rows_
from pyg_mefl.testing.pairs import make_pair, relative_error


def complete_in_order(num_aus):
    """The layout of complete AU graphs of ``num_aus`` nodes with the AU ids in order."""
    return GraphLayout(num_aus, num_aus, True, True, True, True)


def loop_reference(layer, x, edge_index, edge_attr):
    """SPEC §5 node by node: edge update, per-channel softmax of the gates over each node's
    incoming edges, mean of the gated messages. Norms are applied by the caller's choice."""
    U, V, A, B, E = (lin.weight for lin in (layer.lin_u, layer.lin_v, layer.lin_a, layer.lin_b,
                                             layer.lin_e))
    pre = torch.stack([A @ x[i] + B @ x[j] + E @ edge_attr[e]
                       for e, (j, i) in enumerate(edge_index.t().tolist())]) \
        if edge_index.size(1) else edge_attr.new_zeros(0, x.size(1))
    if layer.norm_edge is not None:  # per-channel BatchNorm over all edges (training mode)
        pre = F.batch_norm(pre, None, None, layer.norm_edge.module.weight,
                           layer.norm_edge.module.bias, training=True)
    new_edge_attr = edge_attr + torch.relu(pre)
    out = []
    for i in range(x.size(0)):
        incoming = (edge_index[1] == i).nonzero().flatten().tolist()
        value = U @ x[i]
        if incoming:
            gates = torch.softmax(torch.sigmoid(new_edge_attr[incoming]), dim=0)
            messages = torch.stack([V @ x[edge_index[0, e]] for e in incoming])
            value = value + (gates * messages).sum(dim=0) / len(incoming)
        out.append(value)
    out = torch.stack(out)
    if layer.norm_node is not None:
        out = F.batch_norm(out, None, None, layer.norm_node.module.weight,
                           layer.norm_node.module.bias, training=True)
    if layer.residual == "post":
        return x + torch.relu(out), new_edge_attr
    return torch.relu(x + out), new_edge_attr


def random_graph(num_nodes, num_edges, generator):
    """Random directed graph with uneven in-degree, duplicate-free, some nodes isolated."""
    pairs = torch.randperm(num_nodes * num_nodes, generator=generator)[:num_edges]
    source, target = pairs % num_nodes, pairs // num_nodes
    target = torch.where(target >= num_nodes - 2, target % 3, target)  # last two: no inputs
    edge_index = torch.unique(torch.stack([source, target]), dim=1)
    return edge_index[:, torch.randperm(edge_index.size(1), generator=generator)]


@pytest.mark.parametrize("norm", [None, "batch"])
@pytest.mark.parametrize("residual", ["post", "pre"])
@pytest.mark.parametrize("num_nodes,num_edges", [(7, 15), (11, 40), (5, 3)])
def test_layer_matches_per_node_loop(norm, residual, num_nodes, num_edges, paths):
    generator = torch.Generator().manual_seed(num_nodes * 100 + num_edges)
    torch.manual_seed(num_nodes)
    channels = 9
    layer = GatedGNNLayer(channels, norm=norm, residual=residual).train()
    edge_index = random_graph(num_nodes, num_edges, generator)
    x = torch.randn(num_nodes, channels, generator=generator, requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), channels, generator=generator, requires_grad=True)

    out, new_edge_attr = layer(x, edge_index, edge_attr)
    ref_out, ref_edge_attr = loop_reference(layer, x, edge_index, edge_attr)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new_edge_attr, ref_edge_attr, rtol=1e-5, atol=1e-5)

    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum() + new_edge_attr.sum(), [x, edge_attr])
    ref_grads = torch.autograd.grad((ref_out * weights).sum() + ref_edge_attr.sum(),
                                    [x, edge_attr])
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_isolated_node_keeps_root_term():
    torch.manual_seed(0)
    layer = GatedGNNLayer(6, norm=None)
    x = torch.randn(3, 6)
    edge_index = torch.tensor([[0, 1], [1, 0]])  # node 2 has no incoming edge
    out, _ = layer(x, edge_index, torch.randn(2, 6))
    expected = x[2] + torch.relu(layer.lin_u(x[2]))
    torch.testing.assert_close(out[2], expected)


@pytest.mark.parametrize("norm", [None, "slot"])
def test_gradcheck_float64(norm):
    torch.manual_seed(1)
    slots = dict(num_node_slots=3, num_edge_slots=9) if norm == "slot" else {}
    layer = GatedGNNLayer(4, norm=norm, **slots).double().train()
    edge_index = torch.tensor([[0, 1, 2, 2, 0], [1, 1, 0, 1, 2]])
    node_slot, edge_slot = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 2, 5, 6])
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    edge_attr = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def run(x, edge_attr):
        return layer(x, edge_index, edge_attr, node_slot, edge_slot)

    assert torch.autograd.gradcheck(run, (x, edge_attr))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_complete_cyclic_float64(training):
    """Complete graphs with cyclic slot norms: broadcast sources and, in training, the fused
    norm-ReLU-residual function that recomputes the ReLU's mask in the backward pass."""
    torch.manual_seed(4)
    num_aus, num_faces, channels = 3, 2, 4
    layer = GatedGNNLayer(channels, norm="slot", num_node_slots=num_aus,
                          num_edge_slots=num_aus ** 2).double().train(training)
    edge_index = complete_au_graph(num_aus, num_faces)
    au_id = torch.arange(num_aus).repeat(num_faces)
    edge_slot = au_id[edge_index[1]] * num_aus + au_id[edge_index[0]]
    x = torch.randn(num_aus * num_faces, channels, dtype=torch.float64, requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), channels, dtype=torch.float64,
                            requires_grad=True)

    def run(x, edge_attr):
        return layer(x, edge_index, edge_attr, au_id, edge_slot, complete_in_order(num_aus))

    assert torch.autograd.gradcheck(run, (x, edge_attr))


def test_stack_threads_edges_through_layers():
    torch.manual_seed(2)
    stack = GatedGNN(5, num_layers=3, norm=None).eval()
    x, edge_index, edge_attr = torch.randn(4, 5), torch.tensor([[0, 1, 3], [1, 2, 0]]), \
        torch.randn(3, 5)
    out, edges = stack(x, edge_index, edge_attr)
    for layer in stack.layers:
        x, edge_attr = layer(x, edge_index, edge_attr)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(edges, edge_attr)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="norm"):
        GatedGNNLayer(4, norm="layer")
    with pytest.raises(ValueError, match="residual"):
        GatedGNNLayer(4, residual="both")
    with pytest.raises(ValueError, match="num_node_slots"):
        GatedGNNLayer(4, norm="slot", num_edge_slots=4)
    layer = GatedGNNLayer(4, norm="slot", num_node_slots=2, num_edge_slots=4)
    with pytest.raises(ValueError, match="node_slot"):
        layer(torch.randn(2, 4), torch.tensor([[0], [1]]), torch.randn(1, 4))


@pytest.mark.parametrize("form", ["plain", "EdgeIndex", "Sequential"])
def test_drop_in_pyg_layer(form):
    """A plain edge_index, a torch_geometric.EdgeIndex, and two layers in PyG's Sequential with
    'x, edge_index, edge_attr -> x, edge_attr': each against the per-node loop of SPEC §5."""
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    channels, num_nodes = 6, 7
    layers = [GatedGNNLayer(channels, norm=None, residual=r) for r in ("post", "pre")]
    edge_index = random_graph(num_nodes, 20, generator)
    x = torch.randn(num_nodes, channels, generator=generator, requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), channels, generator=generator)
    ref_x, ref_edges = x, edge_attr
    for layer in layers:
        ref_x, ref_edges = loop_reference(layer, ref_x, edge_index, ref_edges)
    if form == "Sequential":
        model = Sequential("x, edge_index, edge_attr",
                           [(layer, "x, edge_index, edge_attr -> x, edge_attr")
                            for layer in layers])
        out, edges = model(x, edge_index, edge_attr)
    else:
        index = edge_index if form == "plain" else \
            EdgeIndex(edge_index, sparse_size=(num_nodes, num_nodes))
        out, edges = x, edge_attr
        for layer in layers:
            out, edges = layer(out, index, edges)
    torch.testing.assert_close(out, ref_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edges, ref_edges, rtol=1e-5, atol=1e-5)
    grad, = torch.autograd.grad(out.sum() + edges.sum(), x)
    ref_grad, = torch.autograd.grad(ref_x.sum() + ref_edges.sum(), x)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


def test_in_degree_fast_path_matches_the_loop():
    """``in_degree`` (the graph's uniform in-degree, stated where it is built) changes the path,
    not the numbers: against the per-node loop on complete graphs of two faces."""
    generator = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    layer = GatedGNNLayer(5, norm="batch").train()
    edge_index = complete_au_graph(3, 2)
    x = torch.randn(6, 5, generator=generator)
    edge_attr = torch.randn(edge_index.size(1), 5, generator=generator)
    out, edges = layer(x, edge_index, edge_attr, layout=GraphLayout(in_degree=3))
    ref_out, ref_edges = loop_reference(layer, x, edge_index, edge_attr)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(edges, ref_edges, rtol=1e-5, atol=1e-5)


def test_complete_needs_a_matching_in_degree():
    layer = GatedGNNLayer(4, norm=None)
    x, edge_index = torch.randn(6, 4), complete_au_graph(3, 2)
    edge_attr = torch.randn(edge_index.size(1), 4)
    for in_degree in (None, 2, 0):
        with pytest.raises(ValueError, match="layout"):
            layer(x, edge_index, edge_attr, layout=GraphLayout(3, in_degree, True, True))
    with pytest.raises(ValueError, match="layout"):  # 9 edges per node, not 3
        layer(x[:2], edge_index[:, :18] % 2, edge_attr[:18], layout=GraphLayout(3, 3, True, True))
    with pytest.raises(ValueError, match="layout.in_degree=4"):  # 36 edges, 6 nodes
        layer(x, edge_index, edge_attr, layout=GraphLayout(in_degree=4))


@pytest.mark.parametrize("num_aus,num_sub,residual", [(27, 14, "post"), (12, 0, "pre"),
                                                      (8, 0, "pre"), (5, 0, "post")])
@pytest.mark.parametrize("form", ["tensor", "Batch"])
def test_mefl_inference_matches_the_dense_reference(num_aus, num_sub, residual, form):
    """Evaluation without autograd (complete-graph broadcasts, the edge update in place in its
    new buffer) against the dense reference, on a tokens tensor and on a Batch of face graphs."""
    channels, num_tokens, batch = 18, 7, 3  # odd sizes
    dense, model = make_pair(channels, num_aus, num_sub, residual, seed=num_aus + 1)
    dense.eval()
    model.eval()
    tokens = torch.randn(batch, num_tokens, channels)
    given = tokens.clone()
    inputs = tokens if form == "tensor" else \
        Batch.from_data_list([face_graph(t, num_aus) for t in tokens])
    with torch.no_grad():
        ours = model(inputs, return_edges=True)
        ref = dense(tokens)
    assert torch.equal(tokens, given)
    assert relative_error(ours.probs, ref["probs"]) < 1e-5
    edge_attr = ours.edge_attr.reshape(batch, num_aus ** 2, channels)
    assert relative_error(edge_attr, ref["edge_attr"]) < 1e-5


@pytest.mark.parametrize("num_channels", [None, 3])
@pytest.mark.parametrize("cyclic", [False, True])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_inference_norm_in_place_matches_norm_rows(num_channels, cyclic, training):
    """``norm_rows_``: in place (the same tensor back) for a slot norm evaluating with running
    statistics without autograd, out of place otherwise; the numbers of ``norm_rows``."""
    generator = torch.Generator().manual_seed(17)
    norm = SlotBatchNorm(4, num_channels).train(training)
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    x = torch.randn(12, 3, generator=generator)
    slot = torch.arange(4).repeat(3) if cyclic else torch.randint(0, 4, (12,), generator=generator)
    state = {k: v.clone() for k, v in norm.state_dict().items()}
    expected = norm_rows(norm, x, slot, cyclic)
    norm.load_state_dict(state)
    work = x.clone()
    with torch.no_grad():
        got = norm_rows_(norm, work, slot, cyclic)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert (got is work) == (not training)
    work = x.clone()
    assert norm_rows_(norm.eval(), work, slot, cyclic) is not work  # autograd: out of place


@pytest.mark.parametrize("num_channels", [None, 3])
@pytest.mark.parametrize("track", [True, False])
def test_fused_add_relu_norm_matches_autograd(num_channels, track):
    """``add_relu_norm`` on cyclic rows in training (one function, the ReLU's mask stored as
    bytes): values, gradients of input, residual and affine, and running statistics against
    ``residual + relu(norm_rows(...))`` in float64."""
    generator = torch.Generator().manual_seed(18)
    norms = [SlotBatchNorm(4, num_channels, track_running_stats=track).double().train()
             for _ in range(2)]
    with torch.no_grad():
        for name, tensor in norms[0].named_parameters():
            tensor.copy_(torch.randn(tensor.shape, dtype=torch.float64, generator=generator))
    norms[1].load_state_dict(norms[0].state_dict())
    x = torch.randn(12, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    residual = torch.randn(12, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    slot = torch.arange(4).repeat(3)
    fused = add_relu_norm(norms[0], x, residual, slot, cyclic=True)
    plain = residual + torch.relu(norm_rows(norms[1], x, slot, cyclic=False))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    weight = torch.randn(fused.shape, dtype=torch.float64, generator=generator)
    inputs = [x, residual, norms[0].weight, norms[0].bias]
    got = torch.autograd.grad((fused * weight).sum(), inputs)
    want = torch.autograd.grad((plain * weight).sum(), [x, residual, norms[1].weight,
                                                        norms[1].bias])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    for (name, got_buffer), want_buffer in zip(norms[0].named_buffers(), norms[1].buffers()):
        torch.testing.assert_close(got_buffer, want_buffer, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("complete", [False, True])
def test_inference_under_autocast_gives_the_autograd_paths_dtypes(complete):
    """Under bf16 autocast the in-place inference update returns what the out-of-place path
    returns: the same dtypes (float32 edge features in, float32 out) and close values."""
    torch.manual_seed(19)
    num_aus, num_faces, channels = 4, 2, 8
    layer = GatedGNNLayer(channels, norm="slot", num_node_slots=num_aus,
                          num_edge_slots=num_aus ** 2).eval()
    edge_index = complete_au_graph(num_aus, num_faces)
    au_id = torch.arange(num_aus).repeat(num_faces)
    edge_slot = au_id[edge_index[1]] * num_aus + au_id[edge_index[0]]
    x, edge_attr = torch.randn(num_aus * num_faces, channels), \
        torch.randn(edge_index.size(1), channels)
    layout = complete_in_order(num_aus) if complete else GraphLayout(in_degree=num_aus)
    args = (x, edge_index, edge_attr, au_id, edge_slot, layout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            inference = layer(*args)
        reference = layer(*args)
    for got, want in zip(inference, reference):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float().detach(), rtol=0.05, atol=0.05)


def test_a_torch_without_the_private_operators_runs_the_reference_bodies(monkeypatch):
    """Where the fast paths' private torch operators are missing, every layer runs its
    reference body: no call reaches the fast path, and the numbers stay the dense reference's."""
    dense, model = make_pair(12, 5, 0, "post", False, seed=3)
    tokens = torch.randn(2, 4, 12)
    expected = dense(tokens)["probs"]
    monkeypatch.setattr(fused, "_available", False)
    assert not fused.is_enabled()
    for name in ("gated_gnn_layer", "graph_edge_model", "au_feature_blocks",
                 "mefl_nodes_and_edges"):
        for module in (fused_mefl, fused_gnn, fused_blocks, fused_gem):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, None)  # a call would raise a TypeError
    assert relative_error(model(tokens), expected) < 1e-5
