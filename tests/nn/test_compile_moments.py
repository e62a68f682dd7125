"""Compiled softmax_column_moments on complete graphs: under torch.compile its chunks run out of
place (a write into a workspace view, functionalised, rewrites the whole workspace) and give
eager mode's numbers, forward and backward, with chunks that end inside a graph."""
import pytest
import torch

import pyg_mefl.nn.fused.ops as ops
from pyg_mefl import complete_au_graph
from pyg_mefl.nn.fused.ops import softmax_column_moments

pytestmark = pytest.mark.slow  # each compilation costs seconds of CPU
NODES, GRAPHS, ROWS, COLS, WIDTH = 3, 3, 4, 3, 6


def _inputs(dtype):
    generator = torch.Generator().manual_seed(21)
    num = NODES * GRAPHS
    query = torch.randn(num, ROWS, WIDTH, dtype=dtype, generator=generator) * 2
    key = torch.randn(num, COLS, WIDTH, dtype=dtype, generator=generator)
    factor = torch.randn(num, COLS, 5, dtype=dtype, generator=generator)
    gram = factor @ factor.transpose(1, 2)
    return [t.requires_grad_() for t in (query, key, gram)]


def _moments(query, key, gram):
    source, target = complete_au_graph(NODES, GRAPHS)
    return softmax_column_moments(query, key, source, target, gram, run_length=NODES,
                                  complete=NODES)


def _step(fn, query, key, gram, with_gram):
    """Outputs and input gradients of a weighted sum of the outputs."""
    mass, second = fn(query, key, gram if with_gram else None)
    total = (mass * mass.detach().cos()).sum()
    if with_gram:
        total = total + (second * second.detach().sin()).sum()
    inputs = (query, key, gram) if with_gram else (query, key)
    return (mass, second, *torch.autograd.grad(total, inputs))


@pytest.mark.parametrize("targets_per_chunk", [2, 9])
@pytest.mark.parametrize("with_gram", [True, False], ids=["gram", "no-gram"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_complete_moments_match_eager(targets_per_chunk, with_gram, dtype,
                                               monkeypatch):
    monkeypatch.setattr(ops, "_CHUNK_ELEMENTS", 4 * NODES * ROWS * COLS * targets_per_chunk)
    inputs = _inputs(dtype)
    want = _step(_moments, *inputs, with_gram)
    torch._dynamo.reset()
    got = _step(torch.compile(_moments, fullgraph=True, backend="aot_eager"), *inputs,
                with_gram)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert len(got) == len(want)
    for out, expected in zip(got, want):
        if expected is None:
            assert out is None
        else:
            torch.testing.assert_close(out, expected, rtol=rtol, atol=rtol)
