"""The whole model of ``pyg_mefl/nn/mefl.py`` (``MEFL``) with every fast path on against the same
model on its generic paths (float64): outputs, edges, parameter gradients and running
statistics on complete and uneven face graphs, a graph layout made stale by edits being
refused, and evaluation in chunks of faces against the whole batch.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch
from torch_geometric.data import Batch

from paths_helpers import DTYPE
from pyg_mefl import MEFL, GraphLayout, complete_au_graph, face_graph
from pyg_mefl.nn import fused
from pyg_mefl.nn.fused.gem import uses_face_basis


def test_stale_layout_is_refused():
    model = MEFL(8, num_main_aus=3, num_sub_aus=0).eval()
    data = face_graph(torch.randn(4, 8), 3)
    data.edge_index = data.edge_index.flip(1)  # edited after it was built
    with pytest.raises(ValueError, match="data.graph_layout: the graph no longer has in_degree=3"):
        model(data)
    data.graph_layout = GraphLayout()  # states no facts: the generic paths
    assert model(data).shape == (1, 3)
    data = face_graph(torch.randn(4, 8), 3, edge_index=torch.tensor([[0, 1], [1, 0]]))
    data.edge_index = torch.tensor([[0, 1, 0], [1, 0, 1]])  # an edge added twice
    with pytest.raises(ValueError, match="the graph no longer has simple=True"):
        model(data)
    data = face_graph(torch.randn(4, 8), 3)
    data.au_id = data.au_id.flip(0)  # AU ids edited after it was built
    with pytest.raises(ValueError, match="the graph no longer has ids_in_order=True"):
        model(data)


def _model(num_aus=6, channels=16):
    torch.manual_seed(9)
    model = MEFL(channels, num_aus, 0).to(DTYPE)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_var") and module.running_var is not None:
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 1.5)
    return model


def _assert_same_training_step(fast_model, generic_model, fast, generic):
    """Backward of the same loss of ``(probs, edge_attr)`` from both models: equal parameter
    gradients, and equal running statistics (updated by the forward passes)."""
    weights = torch.randn(fast[0].shape, dtype=DTYPE)
    for probs, edge_attr in (fast, generic):
        ((probs * weights).sum() + edge_attr.square().mean()).backward()
    generic_params = dict(generic_model.named_parameters())
    for name, param in fast_model.named_parameters():
        torch.testing.assert_close(param.grad, generic_params[name].grad, rtol=1e-8, atol=1e-10,
                                   msg=lambda m: f"{name}: {m}")
    generic_state = generic_model.state_dict()
    for name, buffer in fast_model.state_dict().items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(buffer, generic_state[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_fast_paths_match_generic_paths(training):
    num_faces, num_aus, tokens, channels = 3, 6, 5, 16
    x = torch.randn(num_faces, tokens, channels, dtype=DTYPE,
                    generator=torch.Generator().manual_seed(10))
    fast_model = _model(num_aus, channels).train(training)
    generic_model = _model(num_aus, channels).train(training)
    generic_model.gem.face_basis = False  # per-node attention in the GEM
    # the same complete graphs with shuffled edges: scatter softmax/aggregation in the GNN and
    # gathered instead of grouped products in the GEM
    generator = torch.Generator().manual_seed(11)
    graphs, perms = [], []
    for b in range(num_faces):
        perm = torch.randperm(num_aus ** 2, generator=generator)
        perms.append(perm + b * num_aus ** 2)
        graphs.append(face_graph(x[b], num_aus, edge_index=complete_au_graph(num_aus)[:, perm]))
    perm = torch.cat(perms)

    reference_model = _model(num_aus, channels).train(training)
    with fused.reference_paths():  # each part's reference body
        reference = reference_model(x, return_edges=True)
    fast = fast_model(x, return_edges=True)
    generic = generic_model(Batch.from_data_list(graphs), return_edges=True)
    torch.testing.assert_close(fast.probs, generic.probs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.probs, reference.probs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.edge_attr, reference.edge_attr, rtol=1e-10, atol=1e-10)
    fast_edges = fast.edge_attr.reshape(-1, channels)[perm]
    torch.testing.assert_close(fast_edges, generic.edge_attr, rtol=1e-10, atol=1e-10)

    _assert_same_training_step(fast_model, generic_model, (fast.probs, fast_edges),
                               (generic.probs, generic.edge_attr))


@pytest.mark.parametrize("density", [0.3, 0.8])
@pytest.mark.parametrize("multigraph", [False, True], ids=["simple", "with-duplicates"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_model_on_uneven_graphs_matches_generic_paths(training, multigraph, density):
    """Uneven face graphs (no uniform in-degree): the face basis with its per-face products on
    the complete grid (simple graphs; with half of the grid's edges or more, the attention maps
    too) or gathered per edge (an edge given twice), against the same model and graphs with no
    layout stated (per-node attention, every product gathered)."""
    num_faces, num_aus, tokens, channels = 3, 6, 5, 16
    x = torch.randn(num_faces, tokens, channels, dtype=DTYPE,
                    generator=torch.Generator().manual_seed(12))
    fast_model = _model(num_aus, channels).train(training)
    generic_model = _model(num_aus, channels).train(training)
    generator = torch.Generator().manual_seed(13)
    graphs = []
    for b in range(num_faces):
        edges = complete_au_graph(num_aus)
        edges = edges[:, torch.rand(edges.size(1), generator=generator) < density]
        if multigraph:
            edges = torch.cat([edges, edges[:, :2]], dim=1)
        edges = edges[:, torch.randperm(edges.size(1), generator=generator)]
        graphs.append(face_graph(x[b], num_aus, edge_index=edges))
    fast_batch = Batch.from_data_list(graphs)
    layout = GraphLayout.of_batch(fast_batch.graph_layout)
    assert layout == GraphLayout(num_aus, None, True, False, not multigraph, True)
    assert uses_face_basis(fast_model.gem, x, layout)
    generic_batch = fast_batch.clone()
    generic_batch.graph_layout = [GraphLayout()] * num_faces

    fast = fast_model(fast_batch, return_edges=True)
    generic = generic_model(generic_batch, return_edges=True)
    torch.testing.assert_close(fast.probs, generic.probs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.edge_attr, generic.edge_attr, rtol=1e-10, atol=1e-10)
    _assert_same_training_step(fast_model, generic_model, (fast.probs, fast.edge_attr),
                               (generic.probs, generic.edge_attr))


@pytest.mark.parametrize("edge_head", [False, True])
def test_eval_in_chunks_of_faces_matches_the_whole_batch(edge_head):
    torch.manual_seed(15)
    model = MEFL(16, 5, 2, sub_au_sources=[1, 3], edge_head=edge_head).to(DTYPE).eval()
    x = torch.randn(7, 4, 16, dtype=DTYPE)
    model.faces_per_chunk = None
    whole = model(x, return_edges=True)
    model.faces_per_chunk = 3  # chunks of 3, 3 and 1 faces
    chunked = model(x, return_edges=True)
    for got, want in zip(chunked, whole):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), whole.probs, rtol=1e-12, atol=1e-12)
