"""Fixtures of the layer tests."""
import pytest

from pyg_mefl.nn import fused


@pytest.fixture(params=["fused", "reference"])
def paths(request):
    """Run a test on the layers' fast paths and on their reference bodies."""
    if request.param == "fused":
        yield request.param
        return
    with fused.reference_paths():
        yield request.param
