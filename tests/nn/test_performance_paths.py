"""The fast paths of pyg_mefl agree with the generic ones (float64, values and gradients).

Fast paths: grouped products in ``gather_matmul`` (edges in equal runs per node, a fact the
caller states), the chunked ``softmax_column_moments`` that recomputes attention maps in its
backward pass, the GEM's face-token basis, and the reshape softmax/aggregation of
``GatedGNNLayer`` on uniform graphs (``in_degree``).
No timing here: see benchmarks/bench_mefl.py.
"""
import pytest
import torch
from torch_geometric.data import Batch

import pyg_mefl.nn.ops as ops
from pyg_mefl import (MEFL, AUFeatureBlocks, GatedGNNLayer, GraphEdgeModel, GraphLayout,
                      SlotBatchNorm,
                      complete_au_graph, edge_slots, face_graph, gather_matmul, uniform_in_degree)
from pyg_mefl.nn.gated_messages import gated_run_messages
from pyg_mefl.nn.ops import softmax_column_moments

DTYPE = torch.float64


@pytest.fixture(params=[False, True], ids=["one-chunk", "many-chunks"])
def chunked(request, monkeypatch):
    """Run a test with the default chunk size and with chunks of a few edges."""
    if request.param:
        monkeypatch.setattr(ops, "_CHUNK_ELEMENTS", 64)
    return request.param


def _grads(out, inputs, seed=0):
    weight = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * weight).sum(), inputs, allow_unused=True)


# ------------------------------------------------------------------------------------------------
# uniform_in_degree: decided once where a graph is built

@pytest.mark.parametrize("target,num_nodes,expected", [
    ([0, 0, 1, 1, 2, 2], 3, 2),
    ([0, 1, 2, 3], 4, 1),
    ([0, 0, 1, 1, 2, 2], 4, None),  # node 3 receives nothing
    ([1, 1, 2, 2], 2, None),        # runs do not start at node 0
    ([0, 0, 1, 1, 1], 2, None),     # uneven runs
    ([1, 1, 0, 0], 2, None),        # not increasing
    ([0, 1, 0, 1], 2, None),        # interleaved
    ([], 3, None),
])
def test_uniform_in_degree(target, num_nodes, expected):
    target = torch.tensor(target, dtype=torch.long)
    edge_index = torch.stack([torch.zeros_like(target), target])
    assert uniform_in_degree(edge_index, num_nodes) == expected


def test_face_graph_records_its_layout():
    tokens = torch.randn(3, 4)
    assert face_graph(tokens, 5).graph_layout == GraphLayout(5, 5, True, True, True, True)
    sparse = face_graph(tokens, 3, edge_index=torch.tensor([[0, 1, 2], [1, 0, 0]]))
    assert sparse.graph_layout == GraphLayout(3, None, True, False, True, True)
    batch = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, 4)])
    assert GraphLayout.of_batch(batch.graph_layout) == GraphLayout(4, 4, True, True, True, True)
    # AU ids given: in order only if they are 0..n-1
    assert face_graph(tokens, au_ids=[0, 1, 2]).graph_layout.ids_in_order
    assert not face_graph(tokens, au_ids=[1, 0, 2]).graph_layout.ids_in_order
    mixed = Batch.from_data_list([face_graph(tokens, 3), face_graph(tokens, au_ids=[1, 0, 2])])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(3, 3, True, True, True, False)
    mixed = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, au_ids=[0, 2])])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(None, None, True, False, True)
    mixed = Batch.from_data_list([face_graph(tokens, 4), sparse])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(None, None, True, False, True)
    # every target keeps all 4 sources, in another order: uniform, but not the reference order
    shuffled = complete_au_graph(4).view(2, 4, 4).flip(2).reshape(2, -1)
    assert face_graph(tokens, 4, edge_index=shuffled).graph_layout == \
        GraphLayout(4, 4, True, False, True, True)
    mixed = Batch.from_data_list([face_graph(tokens, 4), face_graph(tokens, 4,
                                                                   edge_index=shuffled)])
    assert GraphLayout.of_batch(mixed.graph_layout) == GraphLayout(4, 4, True, False, True, True)
    # an edge given twice: a multigraph, not simple
    twice = face_graph(tokens, 3, edge_index=torch.tensor([[0, 1, 0], [1, 0, 1]]))
    assert twice.graph_layout == GraphLayout(3, None, True, False, False, True)
    mixed = Batch.from_data_list([sparse, twice])
    assert GraphLayout.of_batch(mixed.graph_layout) == \
        GraphLayout(3, None, True, False, False, True)


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


# ------------------------------------------------------------------------------------------------
# gather_matmul

def _index_cases(num_edges, num_a, num_b, k, generator):
    grouped = torch.arange(num_edges // k).repeat_interleave(k)  # runs of k
    shuffled = torch.randint(0, num_b, (num_edges,), generator=generator)
    return {
        "both-gathered": (torch.randint(0, num_a, (num_edges,), generator=generator), shuffled),
        "b-grouped": (torch.randint(0, num_a, (num_edges,), generator=generator), grouped),
        "a-per-edge-b-grouped": (None, grouped),
        "a-per-edge-b-gathered": (None, shuffled),
        "a-gathered-b-per-edge": (torch.randint(0, num_a, (num_edges,), generator=generator), None),
    }


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("case", ["both-gathered", "b-grouped", "a-per-edge-b-grouped",
                                  "a-per-edge-b-gathered", "a-gathered-b-per-edge"])
def test_gather_matmul_matches_indexing(case, transpose_b, chunked):
    generator = torch.Generator().manual_seed(0)
    num_edges, num_a, num_b, k, p, q, r = 12, 5, 7, 3, 2, 4, 3
    a_index, b_index = _index_cases(num_edges, num_a, num_b, k, generator)[case]
    a = torch.randn(num_a if a_index is not None else num_edges, p, q, dtype=DTYPE,
                    generator=generator, requires_grad=True)
    b_shape = (r, q) if transpose_b else (q, r)
    b = torch.randn(num_b if b_index is not None else num_edges, *b_shape, dtype=DTYPE,
                    generator=generator, requires_grad=True)

    run_length = k if "grouped" in case else None
    out = gather_matmul(a, b, a_index, b_index, transpose_b=transpose_b, run_length=run_length)
    a_rows = a if a_index is None else a[a_index]
    b_rows = b if b_index is None else b[b_index]
    expected = a_rows @ (b_rows.transpose(1, 2) if transpose_b else b_rows)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out, (a, b)), _grads(expected, (a, b))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("transpose_b", [False, True])
def test_gather_matmul_runs_without_index(transpose_b, chunked):
    """``run_length`` with no ``b_index``: edge ``e`` meets ``b[e // k]``, which is never
    gathered, and its gradient sums the run's products."""
    generator = torch.Generator().manual_seed(2)
    num_edges, k, p, q, r = 12, 3, 2, 4, 3
    a = torch.randn(num_edges, p, q, dtype=DTYPE, generator=generator, requires_grad=True)
    b = torch.randn(num_edges // k, *((r, q) if transpose_b else (q, r)), dtype=DTYPE,
                    generator=generator, requires_grad=True)
    out = gather_matmul(a, b, transpose_b=transpose_b, run_length=k)
    b_rows = b.repeat_interleave(k, dim=0)
    expected = a @ (b_rows.transpose(1, 2) if transpose_b else b_rows)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out, (a, b)), _grads(expected, (a, b))):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["both-gathered", "b-grouped", "a-per-edge-b-grouped"])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_gather_matmul_gradcheck(case, transpose_b, chunked):
    generator = torch.Generator().manual_seed(1)
    a_index, b_index = _index_cases(6, 3, 4, 2, generator)[case]
    a = torch.randn(3 if a_index is not None else 6, 2, 3, dtype=DTYPE, generator=generator,
                    requires_grad=True)
    b = torch.randn(4, *((2, 3) if transpose_b else (3, 2)), dtype=DTYPE, generator=generator,
                    requires_grad=True)
    run_length = 2 if "grouped" in case else None
    assert torch.autograd.gradcheck(
        lambda a, b: gather_matmul(a, b, a_index, b_index, transpose_b, run_length), (a, b))


# ------------------------------------------------------------------------------------------------
# softmax_column_moments

def _naive_moments(query, key, source, target, gram):
    attn = torch.softmax(query[source] @ key[target].transpose(1, 2), dim=-1)
    second = None if gram is None else ((attn @ gram[target]) * attn).sum(dim=(1, 2))
    return attn.sum(dim=1), second


def _moment_inputs(graph, with_gram, generator, num_nodes=5, k=3, rows=4, cols=3, width=6):
    """Inputs of softmax_column_moments on a ``graph``: ``"grouped"`` (k edges per target, random
    sources), ``"gathered"`` (random edges) or ``"complete"`` (complete graphs of k nodes in the
    reference order; ``num_nodes`` is rounded up to whole graphs)."""
    if graph == "complete":
        num_nodes = -(-num_nodes // k) * k
        source, target = complete_au_graph(k, num_nodes // k)
    elif graph == "grouped":
        target = torch.arange(num_nodes).repeat_interleave(k)
    else:
        target = torch.randint(0, num_nodes, (num_nodes * k,), generator=generator)
    if graph != "complete":
        source = torch.randint(0, num_nodes, (num_nodes * k,), generator=generator)
    query = torch.randn(num_nodes, rows, width, dtype=DTYPE, generator=generator) * 2
    key = torch.randn(num_nodes, cols, width, dtype=DTYPE, generator=generator)
    gram = None
    if with_gram:
        factor = torch.randn(num_nodes, cols, 5, dtype=DTYPE, generator=generator)
        gram = factor @ factor.transpose(1, 2)
        gram.requires_grad_()
    return query.requires_grad_(), key.requires_grad_(), gram, source, target


def _moments(graph, query, key, source, target, gram, k):
    """softmax_column_moments with the facts of ``graph`` stated (see _moment_inputs)."""
    return softmax_column_moments(query, key, source, target, gram,
                                  run_length=k if graph in ("grouped", "complete") else None,
                                  complete=k if graph == "complete" else None)


GRAPHS = ["grouped", "gathered", "complete"]


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("with_gram", [True, False], ids=["gram", "no-gram"])
def test_softmax_column_moments_matches_naive(graph, with_gram, chunked):
    generator = torch.Generator().manual_seed(2)
    query, key, gram, source, target = _moment_inputs(graph, with_gram, generator)
    mass, second = _moments(graph, query, key, source, target, gram, 3)
    want_mass, want_second = _naive_moments(query, key, source, target, gram)
    torch.testing.assert_close(mass, want_mass, rtol=1e-12, atol=1e-12)
    inputs = tuple(t for t in (query, key, gram) if t is not None)
    if with_gram:
        torch.testing.assert_close(second, want_second, rtol=1e-12, atol=1e-12)
        total = (mass * mass.detach().sin()).sum() + (second * 0.3).sum()
        want_total = (want_mass * want_mass.detach().sin()).sum() + (want_second * 0.3).sum()
    else:
        assert second is None
        total, want_total = (mass * mass.detach().sin()).sum(), (want_mass * want_mass.detach()
                                                                 .sin()).sum()
    for got, want in zip(torch.autograd.grad(total, inputs),
                         torch.autograd.grad(want_total, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("graph", GRAPHS)
def test_softmax_column_moments_gradcheck(graph, chunked):
    generator = torch.Generator().manual_seed(3)
    query, key, gram, source, target = _moment_inputs(graph, True, generator, num_nodes=3, k=2,
                                                      rows=3, cols=2, width=2)
    assert torch.autograd.gradcheck(
        lambda q, k, g: _moments(graph, q, k, source, target, g, 2), (query, key, gram))
    assert torch.autograd.gradcheck(
        lambda q, k: _moments(graph, q, k, source, target, None, 2)[0], (query, key))


@pytest.mark.parametrize("targets_per_chunk", [1, 2, 5])
def test_complete_moments_chunks_across_graphs(targets_per_chunk, monkeypatch):
    """Chunks of target nodes that end inside a graph and run on into the next (3 nodes a
    graph): the query gradient of a graph sums over its chunks."""
    generator = torch.Generator().manual_seed(15)
    query, key, gram, source, target = _moment_inputs("complete", True, generator, num_nodes=9)
    want = _moments("gathered", query, key, source, target, gram, 3)
    monkeypatch.setattr(ops, "_CHUNK_ELEMENTS", 4 * 3 * 4 * 3 * targets_per_chunk)  # 4 n P R
    assert ops._target_step(3 * 4 * 3) == targets_per_chunk
    got = _moments("complete", query, key, source, target, gram, 3)
    for out, expected in zip(got, want):
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    weights = [torch.randn(out.shape, dtype=DTYPE, generator=generator) for out in want]
    inputs = (query, key, gram)
    for grad, expected in zip(
            torch.autograd.grad(sum((o * w).sum() for o, w in zip(got, weights)), inputs),
            torch.autograd.grad(sum((o * w).sum() for o, w in zip(want, weights)), inputs)):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# GEM: face-token basis against the generic per-node attention

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
    assert fast.uses_face_basis(x, layout)
    out = fast(x, node_tokens, edge_index, batch, slot, layout)
    expected = generic(x, node_tokens, edge_index, batch, slot)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
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
    out = fast(x, rows, edge_index, batch, slot, layout)
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
        fast(x, node_tokens.view(3, 2, *node_tokens.shape[1:]), edge_index, batch, slot,
             GraphLayout(3, 3, True, True))
    with pytest.raises(ValueError, match="by_face"):
        AUFeatureBlocks(3, 16)(x.detach().float(), au_id, batch, by_face=True)


def test_gem_edges_across_faces_use_the_generic_path():
    x, node_tokens, au_id, batch = _gem_inputs(2, 3)
    edge_index = torch.tensor([[0, 3, 1], [4, 1, 1]])  # 0 -> 4 and 3 -> 1 join two faces
    fast, generic = _gem_pair(3)
    layout = GraphLayout(3, None, False)
    assert not fast.uses_face_basis(x, layout)
    slot = edge_slots(edge_index, au_id, 3)
    fast.eval()
    generic.eval()
    torch.testing.assert_close(fast(x, node_tokens, edge_index, batch, slot, layout),
                               generic(x, node_tokens, edge_index, batch, slot, layout))


def test_gem_face_basis_off_when_tokens_exceed_query_channels():
    x, node_tokens, au_id, batch = _gem_inputs(tokens=9, channels=16)  # D = 9 > C/2 = 8
    fast, _ = _gem_pair(4)
    assert not fast.uses_face_basis(x, GraphLayout(4, 4, True))


# ------------------------------------------------------------------------------------------------
# Gated GNN: reshape softmax / aggregation on uniform graphs against the scatter path

@pytest.mark.parametrize("norm", ["slot", "batch", None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("aggr", ["mean", "sum"])
@pytest.mark.parametrize("path", ["runs", "complete", "complete-cyclic"])
def test_gnn_uniform_fast_path_matches_scatter_path(norm, training, aggr, path):
    """Runs of ``in_degree`` edges per target, and complete graphs (source terms broadcast, slot
    norms per slot index or cyclic), against the same graphs with shuffled edges (scatter
    softmax and aggregation); with autograd and without (the in-place inference update)."""
    num_faces, num_aus, channels = 3, 5, 7
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    layer = GatedGNNLayer(channels, norm=norm, num_node_slots=num_aus,
                          num_edge_slots=num_aus ** 2, aggr=aggr).to(DTYPE).train(training)
    _randomize_norms(layer, generator)
    edge_index = complete_au_graph(num_aus, num_faces)  # runs of num_aus edges per target
    assert uniform_in_degree(edge_index, num_faces * num_aus) == num_aus
    perm = torch.randperm(edge_index.size(1), generator=generator)  # same graph, scatter path
    au_id = torch.arange(num_aus).repeat(num_faces)
    x = torch.randn(num_faces * num_aus, channels, dtype=DTYPE, generator=generator,
                    requires_grad=True)
    edge_attr = torch.randn(edge_index.size(1), channels, dtype=DTYPE, generator=generator,
                            requires_grad=True)
    slot = edge_slots(edge_index, au_id, num_aus)
    fast_args = (x, edge_index, edge_attr, au_id, slot, num_aus, path == "complete-cyclic",
                 path != "runs")

    state = {k: v.clone() for k, v in layer.state_dict().items()}
    out, edges = layer(*fast_args)
    # before the next call updates the running statistics the fused batch norm's backward reads
    total = _grads(torch.cat([out.flatten(), edges[perm].flatten()]), (x, edge_attr))
    out_ref, edges_ref = layer(x, edge_index[:, perm], edge_attr[perm], au_id, slot[perm])
    torch.testing.assert_close(out, out_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(edges[perm], edges_ref, rtol=1e-10, atol=1e-10)
    total_ref = _grads(torch.cat([out_ref.flatten(), edges_ref.flatten()]), (x, edge_attr))
    for got, want in zip(total, total_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)

    layer.load_state_dict(state)  # the same running statistics as the first call
    edge_attr_before = edge_attr.detach().clone()
    with torch.no_grad():
        out_inference, edges_inference = layer(*fast_args)
    torch.testing.assert_close(out_inference, out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(edges_inference, edges, rtol=1e-10, atol=1e-10)
    assert torch.equal(edge_attr, edge_attr_before)  # the caller's edges are never written


def _randomize_norms(module, generator):
    """Distinct affine parameters and running statistics for every slot or channel."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if "norm" in name and tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, dtype=tensor.dtype, generator=generator)
                             + 0.5)


def test_gnn_uniform_runs_with_trailing_isolated_nodes():
    """Runs covering nodes 0..2 of 6: nodes 3, 4, 5 receive nothing (x' = U x)."""
    torch.manual_seed(8)
    layer = GatedGNNLayer(6, norm=None).to(DTYPE).eval()
    target = torch.arange(3).repeat_interleave(2)
    source = torch.tensor([0, 1, 5, 4, 2, 3])
    edge_index = torch.stack([source, target])
    x = torch.randn(6, 6, dtype=DTYPE)
    edge_attr = torch.randn(6, 6, dtype=DTYPE)
    out, _ = layer(x, edge_index, edge_attr, in_degree=2)
    perm = torch.tensor([5, 0, 3, 1, 4, 2])
    out_ref, _ = layer(x, edge_index[:, perm], edge_attr[perm])
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# The whole model: every fast path on against the generic paths

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

    fast = fast_model(x, return_edges=True)
    generic = generic_model(Batch.from_data_list(graphs), return_edges=True)
    torch.testing.assert_close(fast.probs, generic.probs, rtol=1e-10, atol=1e-10)
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
    assert fast_model.gem.uses_face_basis(x, layout)
    generic_batch = fast_batch.clone()
    generic_batch.graph_layout = [GraphLayout()] * num_faces

    fast = fast_model(fast_batch, return_edges=True)
    generic = generic_model(generic_batch, return_edges=True)
    torch.testing.assert_close(fast.probs, generic.probs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.edge_attr, generic.edge_attr, rtol=1e-10, atol=1e-10)
    _assert_same_training_step(fast_model, generic_model, (fast.probs, fast.edge_attr),
                               (generic.probs, generic.edge_attr))


def test_custom_functions_under_bf16_autocast():
    """Under autocast the products run in its dtype, forward and backward; gradients reach the
    float32 inputs."""
    generator = torch.Generator().manual_seed(12)
    a = torch.randn(4, 3, 5, generator=generator, requires_grad=True)
    b = torch.randn(4, 6, 5, generator=generator, requires_grad=True)
    index = torch.arange(4).repeat_interleave(2)
    source = torch.randint(0, 4, (8,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gather_matmul(a, b, source, index, transpose_b=True, run_length=2)
        mass, _ = softmax_column_moments(a, b, source, index, run_length=2)
        block_mass, _ = softmax_column_moments(a, b, *complete_au_graph(2, 2), complete=2)
    assert out.dtype == torch.bfloat16 and block_mass.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), a[source] @ b[index].transpose(1, 2), rtol=0.05,
                               atol=0.1)
    (out.float().sum() + mass.float().square().sum() + block_mass.float().square().sum()).backward()
    assert a.grad.dtype == torch.float32 and torch.isfinite(a.grad).all()
    assert b.grad.dtype == torch.float32 and torch.isfinite(b.grad).all()


# ------------------------------------------------------------------------------------------------
# AU feature blocks: the in-place inference norm and the transpose for every-AU faces

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_au_blocks_fast_paths_match_the_gather(training):
    torch.manual_seed(13)
    num_faces, num_aus, tokens, channels = 3, 4, 5, 6
    blocks = AUFeatureBlocks(num_aus, channels).to(DTYPE).train(training)
    with torch.no_grad():
        blocks.norm.weight.uniform_(0.5, 1.5)
        blocks.norm.bias.normal_()
        blocks.norm.running_mean.normal_()
        blocks.norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(num_faces, tokens, channels, dtype=DTYPE)
    au_id = torch.arange(num_aus).repeat(num_faces)
    batch = torch.arange(num_faces).repeat_interleave(num_aus)
    state = {k: v.clone() for k, v in blocks.state_dict().items()}
    gathered = blocks(x, au_id, batch)  # grad enabled: the norm module on gathered rows
    blocks.load_state_dict(state)
    transposed = blocks(x, au_id, batch, every_au=True)
    torch.testing.assert_close(transposed, gathered, rtol=1e-12, atol=1e-12)
    blocks.load_state_dict(state)
    by_face = blocks(x, au_id, batch, every_au=True, by_face=True)
    assert by_face.shape == (num_faces, num_aus, tokens, channels)
    torch.testing.assert_close(by_face.reshape_as(gathered), gathered, rtol=1e-12, atol=1e-12)
    blocks.load_state_dict(state)
    with torch.no_grad():  # in eval: the norm in place on the product, before the rows' pick
        torch.testing.assert_close(blocks(x, au_id, batch, every_au=True), gathered,
                                   rtol=1e-12, atol=1e-12)
        by_face = blocks(x, au_id, batch, every_au=True, by_face=True)
        assert by_face.transpose(1, 2).is_contiguous()  # a view of the product: no copy
        torch.testing.assert_close(by_face.reshape_as(gathered), gathered, rtol=1e-12,
                                   atol=1e-12)
        if not training:  # a subset of AUs of one face
            torch.testing.assert_close(blocks(x[1:], au_id[1:3], batch[:2]), gathered[5:7],
                                       rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# SlotBatchNorm.cyclic (torch's fused norm when rows cycle through the slots) against forward

@pytest.mark.parametrize("channels", [None, 4], ids=["per-slot", "per-slot-channel"])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_slot_norm_cyclic_matches_forward(channels, momentum, training):
    generator = torch.Generator().manual_seed(14)
    num_rows, num_slots = 3, 5
    shape = (num_rows, num_slots, 4) if channels else (num_rows, num_slots, 2, 3)
    x = (torch.randn(shape, dtype=DTYPE, generator=generator) * 3 + 1).requires_grad_()
    norms = [SlotBatchNorm(num_slots, channels, momentum=momentum).to(DTYPE).train(training)
             for _ in range(2)]
    with torch.no_grad():
        norms[0].weight.uniform_(0.5, 1.5, generator=generator)
        norms[0].bias.normal_(generator=generator)
        norms[0].running_mean.normal_(generator=generator)
        norms[0].running_var.uniform_(0.5, 1.5, generator=generator)
    norms[1].load_state_dict(norms[0].state_dict())
    slot = torch.arange(num_slots).repeat(num_rows)
    fast = norms[0].cyclic(x)
    generic = norms[1](x.reshape((-1,) + shape[2:]), slot).view(shape)
    torch.testing.assert_close(fast, generic, rtol=1e-10, atol=1e-10)
    for got, want in zip(_grads(fast, [x] + list(norms[0].parameters())),
                         _grads(generic, [x] + list(norms[1].parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for got, want in zip(norms[0].buffers(), norms[1].buffers()):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize("complete", [False, True], ids=["sources", "complete"])
def test_gated_run_messages_match_the_stored_formulation(complete):
    """Gates recomputed in the backward pass: values and gradients against plain autograd, with
    gathered sources and on complete graphs (sources a broadcast of each face's nodes)."""
    generator = torch.Generator().manual_seed(16)
    k, channels = 3, 5
    num_targets = 6 if complete else 4
    logits = torch.randn(num_targets * k, channels, dtype=DTYPE, generator=generator,
                         requires_grad=True)
    x = torch.randn(6, channels, dtype=DTYPE, generator=generator, requires_grad=True)
    source = complete_au_graph(k, 2)[0] if complete else \
        torch.randint(0, 6, (num_targets * k,), generator=generator)
    given = None if complete else source
    out = gated_run_messages(logits, x, given, k)
    gate = torch.softmax(torch.sigmoid(logits).view(num_targets, k, channels), dim=1)
    expected = gate.reshape(-1, channels) * x[source]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out, (logits, x)), _grads(expected, (logits, x))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda scores, values: gated_run_messages(scores, values, given, k), (logits, x))
