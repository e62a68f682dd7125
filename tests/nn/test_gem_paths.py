"""The fast paths of ``GraphEdgeModel`` (``pyg_mefl/nn/fused/gem.py``) against its generic
per-node attention and its reference body (float64, values, gradients and running statistics):
the face-token basis on complete, run-ordered and sparse shuffled graphs, the block products of
a complete layout without the basis, node tokens given by face, and the cases that must fall
back to the generic path.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

import paths_helpers
from paths_helpers import DTYPE, _grads
from pyg_mefl import (AUFeatureBlocks, GraphEdgeModel, GraphLayout, complete_au_graph,
                      edge_slots)
from pyg_mefl.nn import fused
from pyg_mefl.nn.fused.blocks import au_feature_blocks
from pyg_mefl.nn.fused.gem import graph_edge_model, uses_face_basis

chunked = paths_helpers.chunked  # the fixture: one chunk and many


def _gem_inputs(num_faces=3, num_aus=4, tokens=5, channels=16, seed=4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_faces, tokens, channels, dtype=DTYPE, generator=generator)
    node_tokens = torch.randn(num_faces * num_aus, tokens, channels, dtype=DTYPE,
                              generator=generator)
    au_id = torch.arange(num_aus).repeat(num_faces)
    batch = torch.arange(num_faces).repeat_interleave(num_aus)
    return x.requires_grad_(), node_tokens.requires_grad_(), au_id, batch


def _gem_pair(num_aus, channels=16):
    torch.manual_seed(5)
    fast = GraphEdgeModel(channels, num_edge_slots=num_aus ** 2).to(DTYPE)
    with torch.no_grad():  # distinct slot affines
        fast.norm.weight.uniform_(0.5, 1.5)
        fast.norm.bias.normal_()
        fast.norm.running_mean.normal_()
        fast.norm.running_var.uniform_(0.5, 1.5)
    generic = GraphEdgeModel(channels, num_edge_slots=num_aus ** 2).to(DTYPE)
    generic.load_state_dict(fast.state_dict())
    generic.face_basis = False
    return fast, generic


@pytest.mark.parametrize("graph", ["complete", "complete-runs", "sparse-shuffled",
                                   "sparse-shuffled-simple"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gem_face_basis_matches_generic(graph, training, chunked):
    num_faces, num_aus = 3, 4
    x, node_tokens, au_id, batch = _gem_inputs(num_faces, num_aus)
    edge_index = complete_au_graph(num_aus, num_faces)
    # complete: block products per face; complete-runs: only the uniform in-degree is stated
    layout = GraphLayout(num_aus, num_aus, True, graph == "complete")
    if graph.startswith("sparse-shuffled"):  # uneven in-degree, edges in random order
        keep = torch.rand(edge_index.size(1), generator=torch.Generator().manual_seed(6)) < 0.6
        edge_index = edge_index[:, keep]
        edge_index = edge_index[:, torch.randperm(edge_index.size(1))]
        # stated simple: the per-face value products on the faces' complete grids
        layout = GraphLayout(num_aus, None, True, False, graph.endswith("simple"))
    slot = edge_slots(edge_index, au_id, num_aus)
    fast, generic = _gem_pair(num_aus)
    fast.train(training)
    generic.train(training)
    assert uses_face_basis(fast, x, layout)
    state = {k: v.clone() for k, v in generic.state_dict().items()}
    with fused.reference_paths():  # the equation, one [D, C] relation per edge
        reference = generic(x, node_tokens, edge_index, batch, slot, layout)
    generic.load_state_dict(state)
    out = fast(x, node_tokens, edge_index, batch, slot, layout)
    expected = generic(x, node_tokens, edge_index, batch, slot)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)
    params = (x, node_tokens) + tuple(fast.parameters())
    want_params = (x, node_tokens) + tuple(generic.parameters())
    for got, want in zip(_grads(out, params), _grads(expected, want_params)):
        if want is None:
            assert got is None or float(got.abs().max()) < 1e-10
        else:
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    if training:
        torch.testing.assert_close(fast.norm.running_mean, generic.norm.running_mean)
        torch.testing.assert_close(fast.norm.running_var, generic.norm.running_var)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gem_complete_layout_without_face_basis(training):
    """Per-node attention (no face basis) on complete graphs stated as such: the block products
    against the same layer told nothing about the graph."""
    num_faces, num_aus = 2, 5
    x, node_tokens, au_id, batch = _gem_inputs(num_faces, num_aus, channels=8)
    edge_index = complete_au_graph(num_aus, num_faces)
    slot = edge_slots(edge_index, au_id, num_aus)
    fast, generic = _gem_pair(num_aus, channels=8)
    fast.face_basis = False
    fast.train(training)
    generic.train(training)
    out = fast(x, node_tokens, edge_index, batch, slot, GraphLayout(num_aus, num_aus, True, True))
    expected = generic(x, node_tokens, edge_index, batch, slot)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    params = (x, node_tokens) + tuple(fast.parameters())
    want_params = (x, node_tokens) + tuple(generic.parameters())
    for got, want in zip(_grads(out, params), _grads(expected, want_params)):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("storage", ["token-major", "node-major"])
@pytest.mark.parametrize("face_basis", [True, False], ids=["face-basis", "per-node"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gem_node_tokens_by_face(storage, face_basis, training):
    """Node tokens [G, n, D, C] (a strided view, as the AU blocks give them by face, or node
    rows) against the same tokens as [n G, D, C] rows."""
    num_faces, num_aus = 3, 4
    x, node_tokens, au_id, batch = _gem_inputs(num_faces, num_aus)
    edge_index = complete_au_graph(num_aus, num_faces)
    slot = edge_slots(edge_index, au_id, num_aus)
    layout = GraphLayout(num_aus, num_aus, True, True)
    fast, generic = _gem_pair(num_aus)
    fast.face_basis = generic.face_basis = face_basis
    fast.train(training)
    generic.train(training)
    rows = node_tokens.detach().view(num_faces, num_aus, *node_tokens.shape[1:])
    if storage == "token-major":
        rows = rows.transpose(1, 2).contiguous().transpose(1, 2)
    rows.requires_grad_()
    out = graph_edge_model(fast, x, rows, edge_index, batch, slot, layout)
    expected = generic(x, node_tokens, edge_index, batch, slot, layout)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    (got,), (want,) = _grads(out, (rows,)), _grads(expected, (node_tokens,))
    torch.testing.assert_close(got.reshape_as(want), want, rtol=1e-8, atol=1e-10)


def test_node_tokens_by_face_are_checked():
    x, node_tokens, au_id, batch = _gem_inputs(2, 3)
    fast, _ = _gem_pair(3)
    edge_index = complete_au_graph(3, 2)
    slot = edge_slots(edge_index, au_id, 3)
    with pytest.raises(ValueError, match="nodes a face"):
        graph_edge_model(fast, x, node_tokens.view(3, 2, *node_tokens.shape[1:]), edge_index,
                         batch, slot, GraphLayout(3, 3, True, True))
    with pytest.raises(ValueError, match="by_face"):
        au_feature_blocks(AUFeatureBlocks(3, 16), x.detach().float(), au_id, batch,
                          by_face=True)


def test_gem_edges_across_faces_use_the_generic_path():
    x, node_tokens, au_id, batch = _gem_inputs(2, 3)
    edge_index = torch.tensor([[0, 3, 1], [4, 1, 1]])  # 0 -> 4 and 3 -> 1 join two faces
    fast, generic = _gem_pair(3)
    layout = GraphLayout(3, None, False)
    assert not uses_face_basis(fast, x, layout)
    slot = edge_slots(edge_index, au_id, 3)
    fast.eval()
    generic.eval()
    torch.testing.assert_close(fast(x, node_tokens, edge_index, batch, slot, layout),
                               generic(x, node_tokens, edge_index, batch, slot, layout))


def test_gem_face_basis_off_when_tokens_exceed_query_channels():
    x, node_tokens, au_id, batch = _gem_inputs(tokens=9, channels=16)  # D = 9 > C/2 = 8
    fast, _ = _gem_pair(4)
    assert not uses_face_basis(fast, x, GraphLayout(4, 4, True))
