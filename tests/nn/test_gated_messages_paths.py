"""The fast path of ``pyg_mefl/nn/gated_messages.py``: ``gated_run_messages``, which recomputes
the gates in its backward pass, against the stored formulation under plain autograd (float64,
values, gradients and gradcheck), with gathered sources and on complete graphs.
No timing here: see `python -m benchmarks head`.
"""
import pytest
import torch

from paths_helpers import DTYPE, _grads
from pyg_mefl import complete_au_graph
from pyg_mefl.nn.fused.gated_messages import gated_run_messages


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
