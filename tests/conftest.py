"""Test-wide set-up: the ``one_thread`` fixture. The references the tests compare against are
in ``pyg_mefl.testing``; the test-only helpers of this folder (``real_media``, ``media_files``,
``image_lists``) are importable from its subfolders because pytest puts the folder of this
conftest on ``sys.path`` (its default ``prepend`` import mode, for a folder without
``__init__.py``)."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, also on a busy 2-core machine: use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
