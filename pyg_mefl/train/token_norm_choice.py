"""Choosing the token normalisation on the training data itself, with a cheap stand-in for MEFL."""
from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from ..transforms import TokenNorm
from .baselines import token_mlp_probe

# What "auto" chooses from: with and without removing each face's mean token, each with and
# without appending the token's index (position).
AUTO_CANDIDATES = ("channels", "center+channels", "channels+position",
                   "center+channels+position")


def choose_token_norm(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor,
                      candidates: Sequence[str] = AUTO_CANDIDATES, max_faces: int = 2000,
                      seed: int = 0) -> Tuple[str, Dict[str, float]]:
    r"""The token normalisation (a :class:`~pyg_mefl.transforms.TokenNorm` name) under which a
    :class:`~pyg_mefl.train.TokenMLP` — one map applied to every token, then the mean over the
    face's tokens, which is how MEFL's AU blocks see a face — reaches the best validation mean
    F1 (per-AU thresholds tuned there), and every candidate's score.

    Centring each face removes what its tokens share: a nuisance (identity, lighting) when the
    AU evidence is local, the evidence itself when an AU moves the whole face. Which one holds
    is a property of the data, so it is measured. Appending each token's index (``position``)
    lets the map tell the tokens apart, which matters where an AU is told by *which* token moves
    rather than how (tokens that look alike, one direction shared by several AUs); the
    stand-in has the same blind spot, so it shows where the index helps. The candidates are
    scored on at most ``max_faces`` training faces (seeded) and the validation split; ties go
    to the earlier candidate.

    Shapes:
        - **input:** ``train_x`` :math:`(M, D, C)`, ``train_y`` :math:`(M, A)`, ``val_x``
          :math:`(M_v, D, C)`, ``val_y`` :math:`(M_v, A)`
    """
    if not candidates:
        raise ValueError("candidates: expected at least one token normalisation name")
    if train_x.size(0) > max_faces:
        keep = torch.randperm(train_x.size(0),
                              generator=torch.Generator().manual_seed(seed))[:max_faces]
        train_x, train_y = train_x[keep], train_y[keep]
    scores = {}
    for name in candidates:
        token_norm = TokenNorm(name)
        token_norm.fit([Data(tokens=train_x)])
        train_t, val_t = (token_norm(Data(tokens=x)).tokens for x in (train_x, val_x))
        scores[name] = token_mlp_probe(train_t, train_y, val_t, val_y, val_t, epochs=15,
                                       patience=4, seed=seed).val_mean_f1
    best = max(scores.values())
    return next(name for name in candidates if scores[name] == best), scores
