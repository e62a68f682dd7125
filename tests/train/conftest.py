"""Fixtures of the training tests: examples/train_au.py loaded as a module, as a user runs it."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_au.py"


@pytest.fixture(scope="module")
def train_au():
    spec = importlib.util.spec_from_file_location("train_au", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
