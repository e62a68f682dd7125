"""Training checkpoints: atomic writes, RNG states and strict reading for exact resumes."""
import os
import random
from typing import Optional

import numpy
import torch

from ..utils.files import write_atomically

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# What a training checkpoint holds (checked on --resume).
CHECKPOINT_ENTRIES = ("model", "optimizer", "epoch", "rng", "best_val_f1", "history")


def save_checkpoint(state: dict, path: str) -> None:
    """``torch.save`` to ``path`` atomically (:func:`~pyg_mefl.utils.files.write_atomically`), so
    that an interrupted run never leaves a truncated checkpoint."""
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def rng_state(generator: Optional[torch.Generator] = None) -> dict:
    """The states of torch's, numpy's and Python's global generators and of ``generator``
    (e.g. the ``DataLoader``'s shuffling generator), as tensors and plain Python values, so
    that a checkpoint holding them loads with ``weights_only=True``."""
    kind, keys, position, has_gauss, gauss = numpy.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(numpy.int64)), position, has_gauss, gauss),
            "python": random.getstate(),
            "loader": None if generator is None else generator.get_state()}


def set_rng_state(state: dict, generator: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    numpy.random.set_state((kind, keys.numpy().astype(numpy.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if generator is not None and state["loader"] is not None:
        generator.set_state(state["loader"])


def load_training_checkpoint(path: str) -> dict:
    """A ``checkpoint.pt`` written by :func:`fit`, read with ``weights_only=True``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or not a torch file, or it is not a training
            checkpoint (names the missing entries).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"resume: {path} is not a readable checkpoint (truncated or corrupt?): "
                         f"{type(error).__name__}: {str(error).splitlines()[0][:160]}") from None
    missing = [key for key in CHECKPOINT_ENTRIES if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"resume: {path} is not a training checkpoint of pyg_mefl.fit "
                         f"(missing {missing}); give the checkpoint.pt of an earlier run")
    return state
