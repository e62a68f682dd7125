"""torch.compile runs the layers and the model and gives the same numbers as eager mode."""
import pytest
import torch

from pyg_mefl import MEFL, GatedGNNLayer, complete_au_graph

pytestmark = pytest.mark.slow


def test_compiled_gated_gnn_layer_matches_eager():
    torch.manual_seed(0)
    layer = GatedGNNLayer(8, norm="slot", num_node_slots=5, num_edge_slots=25).eval()
    x = torch.randn(10, 8)
    edge_index = complete_au_graph(5, 2)
    edge_attr = torch.randn(edge_index.size(1), 8)
    node_slot = torch.arange(5).repeat(2)
    edge_slot = torch.arange(25).repeat(2)
    eager = layer(x, edge_index, edge_attr, node_slot, edge_slot)
    compiled = torch.compile(layer)(x, edge_index, edge_attr, node_slot, edge_slot)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_compiled_mefl_matches_eager(training):
    torch.manual_seed(1)
    model = MEFL(16, num_main_aus=8, num_sub_aus=0, edge_head=True).train(training)
    tokens = torch.randn(3, 5, 16, requires_grad=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    eager = model(tokens, return_edges=True)
    eager_grad, = torch.autograd.grad(eager.probs.sum(), tokens)
    model.load_state_dict(state)
    compiled = torch.compile(model)(tokens, return_edges=True)
    compiled_grad, = torch.autograd.grad(compiled.probs.sum(), tokens)
    torch.testing.assert_close(compiled.probs, eager.probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.edge_logits, eager.edge_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
