"""Train/validation/test splits and nested data fractions, reproducible from a seed."""

from __future__ import annotations

import itertools

import numpy as np


def split_indices(
    n: int, fractions: tuple[float, ...] = (0.9, 0.05, 0.05), seed: int = 0
) -> list[np.ndarray]:
    """Cut ``range(n)`` at random into parts of the given fractions (the paper: 90/5/5).

    The fractions must sum to at most 1; each part is sorted (better locality in the store).
    """
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions {fractions} must be non-negative and sum to at most 1")
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    bounds = np.round(np.cumsum((0.0, *fractions)) * n).astype(int)
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]


def nested_fraction(indices: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A ``fraction`` of ``indices``; smaller fractions are subsets of larger ones, so that a
    data-scaling sweep adds data instead of drawing unrelated sets."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} must lie in (0, 1]")
    order = np.random.default_rng([seed, 0xF4AC]).permutation(len(indices))
    k = max(1, round(fraction * len(indices)))
    return np.sort(np.asarray(indices)[order[:k]])


def family_holdout(
    family_ids: np.ndarray, families: list[str], held_out: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Indices outside and inside the named families (for generalisation tests)."""
    unknown = set(held_out) - set(families)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; the store has {families}")
    ids = [families.index(f) for f in held_out]
    inside = np.isin(np.asarray(family_ids), ids)
    return np.nonzero(~inside)[0], np.nonzero(inside)[0]
