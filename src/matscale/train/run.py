"""A training run as one process holds it: :class:`Run`, built by :func:`build_run`.

Order of construction (fixed): store and splits → plain model with data statistics →
parallel plan (activation checkpointing, sharding or DDP, precision) → optimizer. Settings
are checked against the store before anything is built (:mod:`matscale.validation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from matscale.allocator import keep_freed_memory
from matscale.config import ConfigError, RunConfig
from matscale.data.sampler import BatchSampler
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics
from matscale.parallel.deepspeed import building
from matscale.parallel.distributed import (
    Dist,
)
from matscale.parallel.plan import (
    Parallel,
    parallelize,
)
from matscale.train.data import (
    Splits,
    graph_settings_for,
    make_splits,
    sampler_for,
)
from matscale.train.finetune import finetune_start, freeze_backbone
from matscale.train.schedule import Plateau
from matscale.train.step import make_optimizer
from matscale.validation import check_config_for_store


def model_config_for(cfg: RunConfig, store: Store) -> EGNNConfig:
    """The model config resolved against the store: one head per source, the mean neighbour
    count of the data, and a cutoff no larger than the store's."""
    check_config_for_store(cfg, store)
    stats = store.stats
    atoms = sum(s["atoms"] for s in stats.values())
    k = sum(s["mean_neighbours"] * s["atoms"] for s in stats.values()) / max(atoms, 1)
    scale = (cfg.model.cutoff / store.cutoff) ** 3  # neighbours grow with the sphere's volume
    return replace(cfg.model, heads=tuple(store.sources), avg_neighbours=max(1.0, k * scale))


@dataclass
class Run:
    """Everything a training run holds on one process, built by :func:`build_run`."""

    cfg: RunConfig
    d: Dist
    store: Store
    splits: Splits
    model_cfg: EGNNConfig
    graph: GraphSettings
    """How structures become the model's graphs (saved in the exported model)."""
    model: EGNN
    par: Parallel
    optimizer: torch.optim.Optimizer
    sampler: BatchSampler
    plateau: Plateau
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    """Position in the data: batches of ``epoch`` already consumed."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The latest validation metrics."""
    seconds: float = 0.0
    """Wall-clock seconds spent training, over every resumed part of the run."""
    schedule_progress: float = 0.0
    """How far the learning-rate decay has gone, 0..1 (:func:`cosine_progress`)."""
    skipped_steps: int = 0
    """Steps skipped because their loss or gradient was not finite, over the whole run."""
    bad_in_a_row: int = 0
    """Skipped steps since the last good one."""
    resumed_config: dict[str, Any] | None = None
    """The settings recorded in the checkpoint the run resumed from (None: a new run)."""
    resumed_processes: int | None = None
    """How many processes wrote that checkpoint (None: a new run, or not recorded)."""

    @property
    def sharded(self) -> bool:
        """Checkpoints hold per-process shards (FSDP) rather than gathered states."""
        return self.cfg.parallel.backend == "fsdp"


def check_splits(splits: Splits, cfg: RunConfig, n_structures: int) -> None:
    """Refuse splits that would train or evaluate on nothing: a part given a share of the
    data that rounds to no structure (a tiny store), so that no run ends in a blank table."""
    if n_structures and len(splits.holdout) == n_structures:
        raise ConfigError(
            f"data.holdout_families={list(cfg.data.holdout_families)} hold out every structure "
            f"of {cfg.data.store}: nothing is left to train on; hold out fewer families"
        )
    empty = [
        f"{name} ({share:g} of {n_structures:,} structures)"
        for name, share, idx in zip(
            ("train", "validation", "test"),
            cfg.data.split,
            (splits.train, splits.val, splits.test),
            strict=True,
        )
        if share > 0 and len(idx) == 0
    ]
    if empty:
        raise ConfigError(
            f"data.split={list(cfg.data.split)} leaves no structure in {', '.join(empty)} "
            f"of {cfg.data.store}: add data, or give that part a larger share (0 for none)"
        )


def build_run(cfg: RunConfig, d: Dist) -> Run:
    """Store and splits → plain model with data statistics → parallel plan → optimizer."""
    t = cfg.train
    if cfg.parallel.backend in ("none", "ddp"):  # sharded runs are bound by memory instead
        keep_freed_memory()  # a step frees and reallocates its edge tensors: keep the pages
    if cfg.parallel.threads:
        torch.set_num_threads(cfg.parallel.threads)
    torch.manual_seed(t.seed)
    store = Store(cfg.data.store)
    if t.init_from:  # fine-tuning: the trained model's architecture, weights and heads
        model_cfg, model, graph = finetune_start(cfg, store)
        # the run's records (config.yaml, checkpoints, the model file's run config) show the
        # model it trains, not the model.* defaults it did not use
        cfg = replace(cfg, model=model_cfg)
        check_config_for_store(cfg, store)
    else:
        model_cfg = model_config_for(cfg, store)  # checks the settings against the store
        with building(t, cfg.parallel):
            model = EGNN(model_cfg)
        set_statistics(model, store.stats)
        graph = graph_settings_for(store, cfg.data, model_cfg)
    splits = make_splits(store, cfg.data)
    check_splits(splits, cfg, len(store))
    if t.freeze == "backbone":
        freeze_backbone(model)
    model.to(d.device)
    par = parallelize(
        model, cfg.parallel, d, train=t, conservative=model_cfg.force_head == "conservative"
    )
    sampler = sampler_for(
        store, splits.train, cfg.data, train=True, seed=t.seed, rank=d.rank, world=d.world
    )
    if len(sampler) == 0:
        raise ValueError(f"the training split ({len(splits.train)} structures) gives no batch")
    return Run(
        cfg=cfg,
        d=d,
        store=store,
        splits=splits,
        model_cfg=model_cfg,
        graph=graph,
        model=model,
        par=par,
        optimizer=par.optimizer or make_optimizer(model, t),
        sampler=sampler,
        plateau=Plateau(patience=t.plateau_patience, floor=t.min_lr_ratio),
    )
