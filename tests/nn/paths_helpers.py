"""Helpers shared by the tests of the fast paths (``test_*_paths.py`` in this folder): the
float64 dtype they run in, the ``chunked`` fixture (the default chunk size of
``pyg_mefl.nn.fused.ops`` and chunks of a few edges) and ``_grads``, the gradients of a random
weighting of an output.
"""
import pytest
import torch

import pyg_mefl.nn.fused.ops as ops


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
