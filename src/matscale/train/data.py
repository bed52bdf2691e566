"""The data side of a run: splits of the store, samplers and loaders for train and eval."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from matscale.config import DataConfig
from matscale.data.batch import GraphDataset, make_loader
from matscale.data.combine import combined_parts
from matscale.data.sampler import BatchSampler, SamplerConfig
from matscale.data.split import family_holdout, nested_fraction, split_indices
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from matscale.models.egnn import EGNNConfig


@dataclass
class Splits:
    """Store indices of each part of a run's data."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    holdout: np.ndarray

    FIELDS = ("train", "val", "test", "holdout")


def make_splits(store: Store, cfg: DataConfig) -> Splits:
    """Random train/val/test split (fixed by ``split_seed``), the nested training fraction,
    and the held-out families removed from all three and kept apart.

    A combined store (fine-tuning with replay, :mod:`matscale.data.combine`) is split input by
    input: the run's own data by ``cfg``, a replayed store by the settings it was trained
    with, so that none of its validation, test or held-out structures is trained on."""
    parts = combined_parts(store.path)
    if parts is None:
        return _split_block(store, cfg, 0, len(store), strict=True)
    blocks, start = [], 0
    for n, settings in parts:
        block_cfg = cfg
        if settings is not None:
            block_cfg = replace(cfg, fraction=1.0, **_split_settings(settings))
        blocks.append(_split_block(store, block_cfg, start, n, strict=settings is None))
        start += n
    return Splits(*(np.concatenate([getattr(b, f) for b in blocks]) for f in Splits.FIELDS))


def _split_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "split": tuple(settings["split"]),
        "split_seed": int(settings["split_seed"]),
        "holdout_families": tuple(settings.get("holdout_families", ())),
    }


def _split_block(store: Store, cfg: DataConfig, start: int, n: int, *, strict: bool) -> Splits:
    """:func:`make_splits` of the ``n`` structures from ``start`` on (global indices);
    ``strict``: a held-out family the store lacks is an error (a replayed store's settings
    may name families of the pretraining run's other sources)."""
    train, val, test = split_indices(n, cfg.split, seed=cfg.split_seed)
    holdout = np.zeros(0, dtype=np.int64)
    if cfg.holdout_families:
        families = [f for f in cfg.holdout_families if strict or f in store.families]
        ids = store.family_ids[start : start + n]
        _, holdout = family_holdout(ids, store.families, families)
        train, val, test = (np.setdiff1d(x, holdout) for x in (train, val, test))
    if cfg.fraction < 1.0:
        train = nested_fraction(train, cfg.fraction, seed=cfg.split_seed)
    rng = np.random.default_rng([cfg.split_seed, 7])

    def cap(x: np.ndarray) -> np.ndarray:  # a fixed subset keeps evaluations cheap and comparable
        if len(x) <= cfg.val_max_structures:
            return x
        return np.sort(rng.choice(x, cfg.val_max_structures, replace=False))

    return Splits(train + start, cap(val) + start, cap(test) + start, cap(holdout) + start)


def sampler_for(
    store: Store,
    indices: np.ndarray,
    cfg: DataConfig,
    *,
    train: bool,
    seed: int,
    rank: int,
    world: int,
) -> BatchSampler:
    """Batches of ``indices`` for one rank: shuffled with mixture weights for training, in
    order for evaluation."""
    config = SamplerConfig(
        max_atoms=cfg.max_atoms,
        max_edges=cfg.max_edges,
        mixture=cfg.mixture if train else None,
        shuffle=train,
    )
    return BatchSampler(
        n_atoms=store.n_atoms,
        n_edges=store.n_edges,
        source_ids=store.source_ids,
        sources=store.sources,
        indices=indices,
        config=config,
        seed=seed,
        rank=rank,
        world=world,
    )


def graph_settings_for(store: Store, cfg: DataConfig, model: EGNNConfig) -> GraphSettings:
    """The inference transform of a run: the model's cutoff and heads, ``cfg``'s neighbour
    limit, and per head the elements of that source in the store."""
    return GraphSettings.from_stats(
        cutoff=model.cutoff, max_neighbours=cfg.max_neighbours, heads=model.heads, stats=store.stats
    )


def loader_for(
    store: Store,
    sampler: BatchSampler,
    cfg: DataConfig,
    settings: GraphSettings,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of AtomGraph batches built by ``settings``, sources matched to its heads."""
    dataset = GraphDataset(store, settings)
    return make_loader(dataset, sampler, workers=cfg.workers, pin_memory=pin_memory)
