"""torch.compile sees one graph (zero graph breaks) for the model and the layers, and the compiled
code gives eager mode's numbers, forward and backward, and the dense reference's to 1e-5.

Graph breaks are counted with ``torch._dynamo.explain``; compiled-against-eager comparisons use
the ``aot_eager`` backend (the captured forward and backward graphs, without code generation,
cheap enough for every case) and one test runs inductor, the default backend, end to end.

The structural facts that pick the fast paths (uniform in-degree, nodes per face, edges within
faces) travel with the graph as Python values (``GraphLayout``, ``in_degree``), so nothing in the
forward or backward pass reads index values back to the host."""
import pytest
import torch
from torch_geometric.data import Batch

from pyg_mefl.nn.fused.gem import uses_face_basis
from pyg_mefl.testing.pairs import make_pair, relative_error
from pyg_mefl import (MEFL, GatedGNNLayer, GraphEdgeModel, GraphLayout, complete_au_graph,
                      edge_slots, face_graph)

pytestmark = pytest.mark.slow  # each compilation costs seconds of CPU
NUM_AUS, CHANNELS, TOKENS, FACES = 5, 12, 3, 2  # tokens < channels / 2: the face-basis path


def assert_one_graph(fn, *args):
    explanation = torch._dynamo.explain(fn)(*args)
    reasons = [reason.reason.splitlines()[0] for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def run(fn, module, args, grad_inputs):
    """Outputs, input and parameter gradients of a weighted sum of the outputs, and buffers."""
    outputs = [out for out in fn(*args) if out is not None]
    weights = [torch.randn(out.shape, generator=torch.Generator().manual_seed(i))
               for i, out in enumerate(outputs)]
    total = sum((out * weight).nansum() for out, weight in zip(outputs, weights))
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, grad_inputs + params, allow_unused=True)
    buffers = [b.clone() for b in module.buffers()]
    return [out.detach() for out in outputs], grads, buffers


def assert_compiled_matches_eager(fn, module, args, grad_inputs, backend="aot_eager"):
    state = {k: v.clone() for k, v in module.state_dict().items()}
    eager = run(fn, module, args, grad_inputs)
    module.load_state_dict(state)  # the same running statistics before the compiled call
    torch._dynamo.reset()  # each test compiles afresh (no recompile limits across tests)
    compiled = run(torch.compile(fn, fullgraph=True, backend=backend), module, args, grad_inputs)
    for got_group, want_group, rtol in zip(compiled, eager, (1e-5, 1e-4, 1e-5)):
        for got, want in zip(got_group, want_group):
            if want is None:
                assert got is None or float(got.abs().max()) == 0.0
            else:
                torch.testing.assert_close(got, want, rtol=rtol, atol=1e-5, equal_nan=True)
    return compiled[0]


def _face_batch(tokens):
    return Batch.from_data_list([face_graph(t, NUM_AUS) for t in tokens])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("graph", ["tensor", "batch"])
def test_mefl_one_graph_and_compiled_equals_eager(graph, training, paths):
    torch.manual_seed(1)
    model = MEFL(CHANNELS, num_main_aus=NUM_AUS, num_sub_aus=2, sub_au_sources=[0, 3],
                 edge_head=True).train(training)
    tokens = torch.randn(FACES, TOKENS, CHANNELS, requires_grad=True)
    if graph == "tensor":
        inputs = tokens
    else:  # one face with a sparse graph: generic gathers next to the layout's fast paths
        inputs = _face_batch(tokens)
        inputs.tokens = tokens

    def forward(x):
        return model(x, return_edges=True)

    assert_one_graph(forward, inputs)
    assert_compiled_matches_eager(forward, model, (inputs,), [tokens])


def test_inductor_mefl_matches_eager_and_the_dense_reference():
    """With inductor (the default backend), a training step: the dense reference's numbers to
    1e-5 and eager mode's gradients."""
    dense, model = make_pair(CHANNELS, NUM_AUS, 0, "pre", True, seed=3)
    dense.train()
    model.train()
    tokens = torch.randn(FACES, TOKENS, CHANNELS, requires_grad=True)
    ref = dense(tokens.detach())

    def forward(x):
        return model(x, return_edges=True)

    probs, edge_attr, edge_logits = assert_compiled_matches_eager(forward, model, (tokens,),
                                                                  [tokens], backend="inductor")
    assert relative_error(probs, ref["probs"]) < 1e-5
    assert relative_error(edge_attr, ref["edge_attr"]) < 1e-5
    assert relative_error(edge_logits, ref["edge_logits"]) < 1e-5


def _gnn_inputs(shuffled):
    generator = torch.Generator().manual_seed(2)
    edge_index = complete_au_graph(NUM_AUS, FACES)
    node_slot = torch.arange(NUM_AUS).repeat(FACES)
    edge_slot = edge_slots(edge_index, node_slot, NUM_AUS)
    if shuffled:  # an arbitrary graph: drop and shuffle edges
        keep = torch.randperm(edge_index.size(1), generator=generator)[:edge_index.size(1) // 2]
        edge_index, edge_slot = edge_index[:, keep], edge_slot[keep]
    x = torch.randn(FACES * NUM_AUS, CHANNELS, generator=generator, requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), CHANNELS, generator=generator,
                            requires_grad=True)
    return x, edge_index, edge_attr, node_slot, edge_slot


@pytest.mark.parametrize("graph", ["uniform", "arbitrary"])
def test_gated_gnn_layer_one_graph_and_compiled_equals_eager(graph):
    torch.manual_seed(3)
    layer = GatedGNNLayer(CHANNELS, norm="slot", num_node_slots=NUM_AUS,
                          num_edge_slots=NUM_AUS ** 2).train()
    x, edge_index, edge_attr, node_slot, edge_slot = _gnn_inputs(graph == "arbitrary")
    layout = GraphLayout(in_degree=NUM_AUS) if graph == "uniform" else None

    def forward(x, edge_attr):
        return layer(x, edge_index, edge_attr, node_slot, edge_slot, layout)

    assert_one_graph(forward, x, edge_attr)
    assert_compiled_matches_eager(forward, layer, (x, edge_attr), [x, edge_attr])


@pytest.mark.parametrize("graph", ["uniform", "arbitrary", "arbitrary-simple"])
def test_graph_edge_model_one_graph_and_compiled_equals_eager(graph):
    torch.manual_seed(4)
    gem = GraphEdgeModel(CHANNELS, num_edge_slots=NUM_AUS ** 2).train()
    _, edge_index, _, node_slot, edge_slot = _gnn_inputs(graph != "uniform")
    tokens = torch.randn(FACES, TOKENS, CHANNELS, requires_grad=True)
    node_tokens = torch.randn(FACES * NUM_AUS, TOKENS, CHANNELS, requires_grad=True)
    batch = torch.arange(FACES).repeat_interleave(NUM_AUS)
    # arbitrary-simple: the face basis with its per-face products on the complete grid
    layout = {"uniform": GraphLayout(NUM_AUS, NUM_AUS, True),
              "arbitrary": GraphLayout(),
              "arbitrary-simple": GraphLayout(NUM_AUS, None, True, False, True)}[graph]
    assert uses_face_basis(gem, tokens, layout) == (graph != "arbitrary")

    def forward(tokens, node_tokens):
        return (gem(tokens, node_tokens, edge_index, batch, edge_slot, layout),)

    assert_one_graph(forward, tokens, node_tokens)
    assert_compiled_matches_eager(forward, gem, (tokens, node_tokens), [tokens, node_tokens])
