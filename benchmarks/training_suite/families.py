r"""Synthetic token-feature families that differ in what makes AUs hard to recognise.

Every family writes a ``--features`` file of ``examples/train_au.py``: ``tokens`` ``[M, D, C]``,
``labels`` ``[M, N]`` (``1``, ``0``, ``-1`` unknown), a seeded 70/10/20 ``split`` and
``au_names``. A face's tokens are

.. math::
    \mathbf{x}_{f,d} = \mathbf{r}_d + \mathbf{o}_f
        + \sum_{a} y_{f,a}\, s_a\, g_{a,d}\, \mathbf{u}_a + \sigma \boldsymbol{\epsilon}_{f,d},

with a fixed appearance :math:`\mathbf{r}_d` of each token (its face region), a per-face offset
:math:`\mathbf{o}_f` shared by all tokens (identity, lighting), AU :math:`a`'s evidence
direction :math:`\mathbf{u}_a` spread over the tokens by the gains :math:`g_{a,d}` with strength
:math:`s_a`, and noise. The families differ in those parts:

- ``face_offsets`` (the family of issue 12): each AU a weak pattern of its own direction on two
  tokens; per-face offsets about as large as the evidence; a few unknown labels.
- ``shared_directions``: 3 directions shared by the 12 AUs, which differ only in the token they
  move (where, not how), moderate offsets.
- ``global_evidence``: each AU moves every token along its own direction (an expression seen
  over the whole face), so a per-face mean carries the evidence; small offsets.
- ``rare_noisy``: co-occurring AUs with base rates from 3 % to 45 %, 5 % flipped labels and
  15 % unknown labels, local evidence.
- ``mixed_scales``: channels on scales from 0.1 to 10 (un-normalised backbone features), mixed
  local and global AUs, offsets.

Three families where the AU is told by *which* token moves, not how, against MEFL's mean over
tokens (added after the defaults were chosen, to check them):

- ``position_only``: one direction shared by the 12 AUs, each on its own token, and tokens
  whose appearances are nearly alike, so nothing but the token's index tells the AUs apart.
- ``signed_spread``: each AU moves 8 tokens along its direction, 4 forwards and 4 backwards,
  so its evidence cancels in the face mean; faint appearances.
- ``many_tokens``: 49 tokens (a 7 x 7 grid) and a third of the faces, rare AUs (5 % to 25 %),
  4 directions shared by the 12 AUs, each on one token.

    python benchmarks/training_suite/families.py --out benchmarks/training_suite/data
"""
import argparse
import os
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_FACES, NUM_TOKENS, CHANNELS, NUM_AUS = 4000, 16, 32, 12


def _split(num_faces: int, generator: torch.Generator) -> Tensor:
    order = torch.randperm(num_faces, generator=generator)
    split = torch.full((num_faces,), 2, dtype=torch.long)
    split[order[:int(0.7 * num_faces)]] = 0
    split[order[int(0.7 * num_faces):int(0.8 * num_faces)]] = 1
    return split


def _independent_labels(rates: Tensor, num_faces: int, generator: torch.Generator) -> Tensor:
    return (torch.rand(num_faces, rates.numel(), generator=generator) < rates).long()


def _cooccurring_labels(rates: Tensor, num_faces: int, generator: torch.Generator) -> Tensor:
    """Labels from a shared latent expression per face: AUs with correlated latents co-occur,
    each with its own base rate."""
    num_aus = rates.numel()
    mixing = torch.randn(num_aus, 3, generator=generator)
    latent = torch.randn(num_faces, 3, generator=generator) @ mixing.t() \
        + torch.randn(num_faces, num_aus, generator=generator)
    latent = latent / latent.std(dim=0)
    cut = torch.distributions.Normal(0.0, 1.0).icdf(1 - rates)
    return (latent > cut).long()


def _faces(labels: Tensor, gains: Tensor, directions: Tensor, strength: Tensor, offset: float,
           noise: float, generator: torch.Generator, region_scale: float = 1.0) -> Tensor:
    """The tokens of the module docstring's equation; ``gains`` ``[N, D]``, ``directions``
    ``[N, C]``, ``strength`` ``[N]``; the appearances have scale ``region_scale``."""
    num_faces = labels.size(0)
    num_tokens, channels = gains.size(1), directions.size(1)
    regions = region_scale * torch.randn(num_tokens, channels, generator=generator)
    offsets = offset * torch.randn(num_faces, 1, channels, generator=generator)
    weights = labels.float() * strength  # [M, N]
    evidence = torch.einsum("fa,ad,ac->fdc", weights, gains, directions)
    return regions + offsets + evidence + noise * torch.randn(
        num_faces, num_tokens, channels, generator=generator)


def _local_gains(num_aus: int, num_tokens: int, per_au: int, generator: torch.Generator) -> Tensor:
    gains = torch.zeros(num_aus, num_tokens)
    for au in range(num_aus):
        gains[au, torch.randperm(num_tokens, generator=generator)[:per_au]] = 1.0
    return gains


def _unit(rows: int, channels: int, generator: torch.Generator) -> Tensor:
    return F.normalize(torch.randn(rows, channels, generator=generator), dim=1)


def _hide(labels: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    unknown = torch.rand(labels.shape, generator=generator) < fraction
    return torch.where(unknown, torch.full_like(labels, -1), labels)


def face_offsets(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.1, 0.3, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = _local_gains(NUM_AUS, NUM_TOKENS, 2, generator)
    tokens = _faces(labels, gains, _unit(NUM_AUS, CHANNELS, generator),
                    torch.full((NUM_AUS,), 0.7), offset=0.7, noise=0.35,
                    generator=generator)
    return {"tokens": tokens, "labels": _hide(labels, 0.02, generator)}


def shared_directions(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.15, 0.4, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = torch.zeros(NUM_AUS, NUM_TOKENS)
    gains[torch.arange(NUM_AUS), torch.randperm(NUM_TOKENS, generator=generator)[:NUM_AUS]] = 1.0
    directions = _unit(3, CHANNELS, generator)[torch.arange(NUM_AUS) % 3]
    tokens = _faces(labels, gains, directions, torch.full((NUM_AUS,), 1.2), offset=0.3,
                    noise=0.4, generator=generator)
    return {"tokens": tokens, "labels": labels}


def global_evidence(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.15, 0.4, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = torch.ones(NUM_AUS, NUM_TOKENS)
    tokens = _faces(labels, gains, _unit(NUM_AUS, CHANNELS, generator),
                    torch.full((NUM_AUS,), 0.6), offset=0.1, noise=1.0, generator=generator)
    return {"tokens": tokens, "labels": _hide(labels, 0.02, generator)}


def rare_noisy(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.linspace(0.03, 0.45, NUM_AUS)
    labels = _cooccurring_labels(rates, num_faces, generator)
    gains = _local_gains(NUM_AUS, NUM_TOKENS, 1, generator)
    tokens = _faces(labels, gains, _unit(NUM_AUS, CHANNELS, generator),
                    torch.full((NUM_AUS,), 1.5), offset=0.5, noise=0.5, generator=generator)
    flipped = torch.rand(labels.shape, generator=generator) < 0.05
    labels = torch.where(flipped, 1 - labels, labels)
    return {"tokens": tokens, "labels": _hide(labels, 0.15, generator)}


def mixed_scales(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.1, 0.4, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = torch.cat([_local_gains(NUM_AUS // 2, NUM_TOKENS, 3, generator),
                       torch.full((NUM_AUS - NUM_AUS // 2, NUM_TOKENS), 0.5)])
    tokens = _faces(labels, gains, _unit(NUM_AUS, CHANNELS, generator),
                    torch.full((NUM_AUS,), 1.0), offset=0.5, noise=0.5, generator=generator)
    scales = torch.logspace(-1, 1, CHANNELS)[torch.randperm(CHANNELS, generator=generator)]
    shift = 3.0 * torch.randn(CHANNELS, generator=generator)
    return {"tokens": tokens * scales + shift, "labels": labels}


def position_only(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.15, 0.4, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = torch.zeros(NUM_AUS, NUM_TOKENS)
    gains[torch.arange(NUM_AUS), torch.randperm(NUM_TOKENS, generator=generator)[:NUM_AUS]] = 1.0
    directions = _unit(1, CHANNELS, generator).expand(NUM_AUS, -1)
    tokens = _faces(labels, gains, directions, torch.full((NUM_AUS,), 1.0), offset=0.3,
                    noise=0.5, generator=generator, region_scale=0.05)
    return {"tokens": tokens, "labels": labels}


def signed_spread(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    rates = torch.empty(NUM_AUS).uniform_(0.1, 0.35, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = torch.zeros(NUM_AUS, NUM_TOKENS)
    for au in range(NUM_AUS):
        moved = torch.randperm(NUM_TOKENS, generator=generator)[:8]
        gains[au, moved[:4]], gains[au, moved[4:]] = 1.0, -1.0
    tokens = _faces(labels, gains, _unit(NUM_AUS, CHANNELS, generator),
                    torch.full((NUM_AUS,), 0.4), offset=0.5, noise=0.6, generator=generator,
                    region_scale=0.3)
    return {"tokens": tokens, "labels": _hide(labels, 0.02, generator)}


def many_tokens(generator: torch.Generator, num_faces: int = NUM_FACES) -> Dict[str, Tensor]:
    num_faces, num_tokens = num_faces // 3, 49
    rates = torch.empty(NUM_AUS).uniform_(0.05, 0.25, generator=generator)
    labels = _independent_labels(rates, num_faces, generator)
    gains = _local_gains(NUM_AUS, num_tokens, 1, generator)
    directions = _unit(4, CHANNELS, generator)[torch.arange(NUM_AUS) % 4]
    tokens = _faces(labels, gains, directions, torch.full((NUM_AUS,), 1.5), offset=0.5,
                    noise=0.5, generator=generator, region_scale=0.5)
    return {"tokens": tokens, "labels": labels}


FAMILIES: Dict[str, Callable[..., Dict[str, Tensor]]] = {
    "face_offsets": face_offsets, "shared_directions": shared_directions,
    "global_evidence": global_evidence, "rare_noisy": rare_noisy, "mixed_scales": mixed_scales,
    "position_only": position_only, "signed_spread": signed_spread, "many_tokens": many_tokens}


def make_family(name: str, seed: int = 0, num_faces: int = NUM_FACES) -> Dict[str, object]:
    """The ``--features`` content of family ``name`` (see the module docstring)."""
    if name not in FAMILIES:
        raise KeyError(f"family: expected one of {sorted(FAMILIES)}, got {name!r}")
    generator = torch.Generator().manual_seed(seed)
    content = FAMILIES[name](generator, num_faces)
    content["split"] = _split(content["tokens"].size(0), generator)
    content["au_names"] = [f"AU{k}" for k in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)]
    return content


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-faces", type=int, default=NUM_FACES)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in FAMILIES:
        path = os.path.join(args.out, f"{name}.pt")
        torch.save(make_family(name, args.seed, args.num_faces), path)
        print(path)


if __name__ == "__main__":
    main()
