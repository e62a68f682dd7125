"""Named token-normalisation recipes, fitted on the training split and saved in checkpoints."""
import os
from typing import Dict, Iterable, Optional, Union

import torch
from torch_geometric.transforms import BaseTransform, Compose

from .add_token_position import AddTokenPosition
from .center_tokens import CenterTokens
from .standardize_channels import StandardizeChannels
from .standardize_tokens import StandardizeTokens

TOKEN_NORM_STEPS = {"center": CenterTokens, "standardize": StandardizeTokens,
                    "channels": StandardizeChannels, "position": AddTokenPosition}
# The checkpoint entry that holds a TokenNorm's state_dict.
CHECKPOINT_KEY = "token_norm"
# 2: the position code is scaled to sqrt(C) (1 before); states without a version are 1.
STATE_VERSION = 2


class TokenNorm(BaseTransform):
    r"""A token normalisation named by its steps joined with ``+``, applied in that order:

    - ``center``: :class:`CenterTokens` (subtract each face's mean token);
    - ``standardize``: :class:`StandardizeTokens` (centre, then divide by each face's RMS);
    - ``channels``: :class:`StandardizeChannels` (per-channel statistics of the training split);
    - ``position``: :class:`AddTokenPosition` (append each token's one-hot index, scaled to
      the norm of a standardised token);
    - ``none``: no change.

    ``TokenNorm("center+channels")`` centres each face, then standardises the channels with
    statistics fitted (:meth:`fit`) on centred training faces. :meth:`state_dict` holds the
    name and the fitted statistics (tensors and strings, readable with ``weights_only=True``);
    :func:`load_token_norm` rebuilds the transform from a checkpoint that holds it.

    Args:
        name (str): The recipe, e.g. ``"center"``, ``"center+channels"``, ``"none"``.

    Shapes:
        - **input:** a face graph (or batch) with ``tokens`` :math:`(B, D, C)`
        - **output:** the same, ``tokens`` :math:`(B, D, C')` (:math:`C' = C + D` with
          ``position``)
    """

    def __init__(self, name: str = "none"):
        if not isinstance(name, str):
            raise TypeError(f"token_norm: expected a str such as 'center+channels', got "
                            f"{type(name).__name__}")
        steps = [] if name == "none" else name.split("+")
        unknown = [step for step in steps if step not in TOKEN_NORM_STEPS]
        if unknown or len(set(steps)) != len(steps) or not name:
            raise ValueError(f"token_norm: expected 'none' or distinct steps from "
                             f"{sorted(TOKEN_NORM_STEPS)} joined with '+', got {name!r}")
        self.name = name
        self.steps = [TOKEN_NORM_STEPS[step]() for step in steps]

    @property
    def needs_fit(self) -> bool:
        """Whether a step has statistics still to fit."""
        return any(isinstance(step, StandardizeChannels) and step.mean is None
                   for step in self.steps)

    def fit(self, source: Iterable) -> "TokenNorm":
        """Fits the steps with statistics on ``source`` (the training split's faces), each on
        the faces as the steps before it leave them."""
        for index, step in enumerate(self.steps):
            if isinstance(step, StandardizeChannels):
                step.fit(source, Compose(self.steps[:index]) if index else None)
        return self

    def forward(self, data):
        for step in self.steps:
            data = step.forward(data)
        return data

    def state_dict(self) -> Dict[str, object]:
        """``{"name": str, "steps": {index: statistics}, "version": int}`` for the fitted
        steps."""
        return {"name": self.name, "version": STATE_VERSION,
                "steps": {str(index): step.state_dict() for index, step in enumerate(self.steps)
                          if isinstance(step, StandardizeChannels)}}

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> "TokenNorm":
        """The transform that :meth:`state_dict` described."""
        if not (isinstance(state, dict)
                and {"name", "steps"} <= set(state) <= {"name", "steps", "version"}):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise KeyError(f"{CHECKPOINT_KEY}: expected the keys ['name', 'steps', 'version'], "
                           f"got {keys}")
        transform = cls(state["name"])
        version = state.get("version", 1)
        if version != STATE_VERSION and any(isinstance(step, AddTokenPosition)
                                             for step in transform.steps):
            raise KeyError(f"{CHECKPOINT_KEY}: {state['name']!r} was saved by an earlier "
                           f"pyg_mefl (version {version} of the state), whose position code "
                           f"had scale 1; train the model again to use it here")
        fitted = {str(index) for index, step in enumerate(transform.steps)
                  if isinstance(step, StandardizeChannels)}
        if set(state["steps"]) != fitted:
            raise KeyError(f"{CHECKPOINT_KEY}: {state['name']!r} expects statistics for steps "
                           f"{sorted(fitted)}, got {sorted(state['steps'])}")
        for index, statistics in state["steps"].items():
            transform.steps[int(index)].load_state_dict(statistics)
        return transform

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r})"


def load_token_norm(checkpoint: Union[str, os.PathLike, dict]) -> Optional[TokenNorm]:
    """The :class:`TokenNorm` a checkpoint was trained with (``best.pt`` or ``checkpoint.pt``
    of ``examples/train_au.py``, as a path or a loaded dict), to apply to faces before the
    model predicts; :obj:`None` for a checkpoint without one (a published checkpoint, or a
    run from before token normalisation), whose model takes the tokens as they are.

    Example:
        >>> transform = load_token_norm("runs/demo/best.pt")
        >>> data = transform(data) if transform is not None else data
    """
    if not isinstance(checkpoint, dict):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
        path = checkpoint
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a truncated or foreign file
            raise ValueError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                             f"{type(error).__name__}") from None
        if not isinstance(checkpoint, dict):
            raise ValueError(f"{path}: expected a checkpoint dict, got "
                             f"{type(checkpoint).__name__}")
    state = checkpoint.get(CHECKPOINT_KEY)
    return None if state is None else TokenNorm.from_state_dict(state)
