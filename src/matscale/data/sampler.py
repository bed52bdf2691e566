"""Which structures each rank reads, batch by batch: deterministic, mixed, bounded, resumable.

For epoch ``e`` the plan is a pure function of ``(seed, e)`` and the sampler's inputs:

1. draw the epoch's structures: a permutation of ``indices``, or, with ``mixture`` weights,
   ``round(w_s · len(indices))`` structures of each source ``s`` (sampled without replacement,
   repeating whole permutations when a source is up-weighted beyond its size), shuffled;
2. deal them to ranks (``order[rank::world]``), so ranks read disjoint structures;
3. cut each rank's list, in order, into batches bounded by ``max_atoms``, ``max_edges`` and
   ``max_structures`` (a structure larger than a bound alone forms its own batch: no data is
   silently dropped for being big);
4. keep the same number of batches on every rank (the smallest), since data-parallel steps
   must match; the few structures cut off are at the end of a fresh random order each epoch.

A restarted run calls :meth:`BatchSampler.set_epoch` with the epoch and the number of batches
already consumed, and sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True)
class SamplerConfig:
    """Batch bounds and source mixture of the training sampler."""

    max_atoms: int = 2048
    """Most atoms in one batch on one rank."""
    max_edges: int | None = None
    """Most directed edges (at the store's cutoff) in one batch on one rank; None: no bound."""
    max_structures: int | None = None
    """Most structures in one batch on one rank; None: no bound."""
    mixture: dict[str, float] | None = None
    """Relative weight of each source per epoch; None samples in proportion to size."""
    shuffle: bool = True
    """Shuffle every epoch (validation sets this False)."""


class BatchSampler:
    """Yields arrays of store indices, one per batch, for one rank of ``world``.

    Parameters
    ----------
    n_atoms, n_edges, source_ids: per-structure arrays of the whole store ([n_store]).
    indices: the store indices this sampler draws from (e.g. a training split).
    sources: names of the store's sources (to read ``mixture`` keys).
    """

    def __init__(
        self,
        *,
        n_atoms: np.ndarray,
        n_edges: np.ndarray,
        source_ids: np.ndarray,
        sources: list[str],
        indices: np.ndarray,
        config: SamplerConfig,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in 0..{world - 1}")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n_atoms = np.asarray(n_atoms)[self.indices].astype(np.int64)
        self.n_edges = np.asarray(n_edges)[self.indices].astype(np.int64)
        self.source_ids = np.asarray(source_ids)[self.indices]
        self.sources = sources
        self.config = config
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.start = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        if config.mixture is not None:
            unknown = set(config.mixture) - set(sources)
            if unknown:
                raise ValueError(
                    f"mixture names unknown sources {sorted(unknown)}; the store has {sources}"
                )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from batch ``start_batch`` on (for resuming)."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        """Batches per epoch on every rank."""
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[np.ndarray]:
        batches = self.batches(self.epoch)
        for b in range(self.start, len(batches)):
            yield batches[b]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` (store indices), the same on every call."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self._epoch_order(epoch)
        per_rank = [order[r :: self.world] for r in range(self.world)]
        cuts = [self._cut(p) for p in per_rank]
        n = min(len(c) for c in cuts)
        mine = per_rank[self.rank]
        bounds = cuts[self.rank]
        batches = [self.indices[mine[lo:hi]] for lo, hi in bounds[:n]]
        self._cache = (epoch, batches)
        return batches

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Positions into ``self.indices`` for this epoch, before dealing to ranks."""
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.indices)
        if self.config.mixture is None:
            return rng.permutation(n) if self.config.shuffle else np.arange(n)
        weights = {self.sources.index(k): w for k, w in self.config.mixture.items() if w > 0}
        present = {s: np.nonzero(self.source_ids == s)[0] for s in weights}
        present = {s: p for s, p in present.items() if len(p)}
        total = sum(weights[s] for s in present)
        parts = []
        for s, pos in present.items():
            want = round(weights[s] / total * n)
            reps = [rng.permutation(pos) for _ in range(want // len(pos) + 1)]
            parts.append(np.concatenate(reps)[:want])
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rng.permutation(order) if self.config.shuffle else np.sort(order)

    def _cut(self, positions: np.ndarray) -> list[tuple[int, int]]:
        """Greedy in-order cut of ``positions`` into batches within the bounds: [(lo, hi)]."""
        c = self.config
        limits = [(np.cumsum(self.n_atoms[positions]), c.max_atoms)]
        if c.max_edges is not None:
            limits.append((np.cumsum(self.n_edges[positions]), c.max_edges))
        n = len(positions)
        out = []
        lo = 0
        while lo < n:
            hi = n if c.max_structures is None else min(n, lo + c.max_structures)
            for cum, bound in limits:
                before = cum[lo - 1] if lo else 0
                hi = min(hi, int(np.searchsorted(cum, before + bound, side="right")))
            hi = max(hi, lo + 1)  # an oversized structure forms a batch of its own
            out.append((lo, hi))
            lo = hi
        return out
