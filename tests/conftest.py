"""Test-wide set-up: the shared references (``dense_reference``, ``pairs``, ``image_lists``) in
this folder are importable from the test folders that mirror the package; the ``one_thread``
fixture."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, also on a busy 2-core machine: use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
