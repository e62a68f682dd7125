"""The fast paths of ``pyg_mefl/nn/ops.py`` against plain indexing and autograd (float64, values
and gradients): the grouped products of ``gather_matmul`` (edges in equal runs per node, a fact
the caller states) against ``a[a_index] @ b[b_index]``, and the chunked
``softmax_column_moments`` that recomputes attention maps in its backward pass against the naive
softmax moments, with one chunk and many, plus both functions under bf16 autocast.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

import paths_helpers
import pyg_mefl.nn.fused.ops as ops
from paths_helpers import DTYPE, _grads
from pyg_mefl import complete_au_graph, gather_matmul
from pyg_mefl.nn.fused.ops import softmax_column_moments

chunked = paths_helpers.chunked  # the fixture: one chunk and many


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
# Both custom functions under autocast

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
