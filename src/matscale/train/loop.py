"""``matscale train``: one function that builds a run from its config and trains it.

Order of construction (fixed): process group → store and splits → plain model with data
statistics → precision policy → data-parallel wrapper → optimizer → resume → loop. The step
itself is :func:`matscale.train.step.train_step`.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from typing import Any

import torch

from matscale.config import RunConfig, dump, to_dict
from matscale.data.store import Store
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics
from matscale.parallel.checkpointing import apply_ac
from matscale.parallel.distributed import Dist, all_max, finish, init_distributed, wrap_ddp
from matscale.train.checkpoint import (
    export_model,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from matscale.train.data import loader_for, make_splits, sampler_for
from matscale.train.evaluate import evaluate
from matscale.train.log import RunLog
from matscale.train.schedule import Plateau, lr_at
from matscale.train.step import ema_update, make_optimizer, train_step


def model_config_for(cfg: RunConfig, store: Store) -> EGNNConfig:
    """The model config resolved against the store: one head per source, the mean neighbour
    count of the data, and a cutoff no larger than the store's."""
    stats = store.stats
    atoms = sum(s["atoms"] for s in stats.values())
    k = sum(s["mean_neighbours"] * s["atoms"] for s in stats.values()) / max(atoms, 1)
    if cfg.model.cutoff > store.cutoff + 1e-9:
        # edge counts (for batching) and statistics were made at the store's cutoff
        raise ValueError(
            f"model.cutoff {cfg.model.cutoff} Å exceeds the store's cutoff "
            f"{store.cutoff} Å; repack with --cutoff {cfg.model.cutoff}"
        )
    scale = (cfg.model.cutoff / store.cutoff) ** 3  # neighbours grow with the sphere's volume
    return replace(cfg.model, heads=tuple(store.sources), avg_neighbours=max(1.0, k * scale))


def train(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run ``cfg``; returns the final metrics. Rank 0 writes the run
    directory: config.yaml, metrics.jsonl, TensorBoard events, checkpoints/, model.pt."""
    d = init_distributed(cfg.parallel.backend)
    try:
        return _train(cfg, d, progress=progress)
    finally:
        finish()


def _train(cfg: RunConfig, d: Dist, *, progress: bool) -> dict[str, Any]:
    t = cfg.train
    if cfg.parallel.threads:
        torch.set_num_threads(cfg.parallel.threads)
    torch.manual_seed(t.seed)
    store = Store(cfg.data.store)
    splits = make_splits(store, cfg.data)
    model_cfg = model_config_for(cfg, store)
    model = EGNN(model_cfg)
    set_statistics(model, store.stats)
    model.to(d.device)
    ema = copy.deepcopy(model) if t.ema_decay else None
    if cfg.parallel.activation_checkpointing:
        apply_ac(model)
    wrapped = wrap_ddp(model, d)
    optimizer = make_optimizer(model, t)
    plateau = Plateau(patience=t.plateau_patience, floor=t.min_lr_ratio)
    autocast = (
        torch.autocast(d.device.type, dtype=torch.bfloat16)
        if cfg.parallel.precision == "bf16"
        else nullcontext()
    )
    sampler = sampler_for(
        store, splits.train, cfg.data, train=True, seed=t.seed, rank=d.rank, world=d.world
    )
    if len(sampler) == 0:
        raise ValueError(f"the training split ({len(splits.train)} structures) gives no batch")
    run_dir = cfg.run_dir
    step, epoch, batch_in_epoch = 0, 0, 0
    history: dict[str, Any] = {}
    found = list_checkpoints(run_dir)
    if found:
        ck = load_checkpoint(found[-1])
        model.load_state_dict(ck["model"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        plateau = Plateau(**ck["plateau"])
        step, epoch, batch_in_epoch = ck["step"], ck["epoch"], ck["batch_in_epoch"]
        history = ck.get("metrics", {})
        set_rng_state(ck["rng"])
    log = RunLog(run_dir, enabled=d.main, progress=progress, total=t.steps, start=step)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump(cfg))
        log.text(
            f"{'resuming at step ' + str(step) if found else 'starting'}: "
            f"{sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{len(splits.train):,} training structures, {len(sampler)} batches/epoch "
            f"on each of {d.world} process(es)"
        )
    deadline = time.monotonic() + 60 * t.max_minutes if t.max_minutes else math.inf

    def state(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema else None,
            "optimizer": optimizer.state_dict(),
            "plateau": asdict(plateau),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "config": to_dict(cfg),
            "model_config": to_dict(model_cfg),
            "stats": store.stats,
            "metrics": metrics,
        }

    def validate() -> dict[str, float]:
        eval_model = ema if ema is not None else model
        val_sampler = sampler_for(
            store, splits.val[d.rank :: d.world], cfg.data, train=False, seed=0, rank=0, world=1
        )
        metrics = evaluate(
            eval_model,
            loader_for(store, val_sampler, cfg.data, model_cfg.cutoff),
            store.sources,
            d.device,
            stress=t.stress_weight > 0,
            autocast=autocast,
        )
        return metrics

    micro: list[Any] = []
    stop = step >= t.steps  # a finished run only re-evaluates and re-exports
    if stop and not history:
        history = validate()
    while not stop:
        sampler.set_epoch(epoch, batch_in_epoch)
        for g in loader_for(
            store, sampler, cfg.data, model_cfg.cutoff, pin_memory=d.device.type == "cuda"
        ):
            batch_in_epoch += 1
            micro.append(g)
            if len(micro) < t.accumulation:
                continue
            lr = (
                lr_at(
                    step,
                    lr=t.lr,
                    steps=t.steps,
                    warmup=t.warmup_steps,
                    kind=t.schedule,
                    min_ratio=t.min_lr_ratio,
                )
                * plateau.scale
            )
            stats = train_step(
                wrapped, micro, optimizer, t, lr=lr, device=d.device, autocast=autocast
            )
            micro = []
            if ema is not None:
                ema_update(ema, model, t.ema_decay or 0.0)
            step += 1
            log.step(step, stats, lr)
            # every process must stop at the same step, whatever its own clock says
            done = bool(
                all_max(torch.tensor(float(step >= t.steps or time.monotonic() > deadline)))
            )
            if step % t.eval_every == 0 or done:
                history = validate()
                if t.schedule == "plateau":
                    plateau.update(
                        history.get("forces_mae_meV_per_A", history["energy_mae_meV_per_atom"])
                    )
                log.metrics(step, history, prefix="val")
            if d.main and (step % t.checkpoint_every == 0 or done):
                save_checkpoint(state(history), run_dir, step, t.keep_checkpoints)
            if done:
                stop = True
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    final = dict(history)
    for name in ("test", "holdout"):
        idx = getattr(splits, name)
        if len(idx):
            s = sampler_for(
                store, idx[d.rank :: d.world], cfg.data, train=False, seed=0, rank=0, world=1
            )
            res = evaluate(
                ema if ema is not None else model,
                loader_for(store, s, cfg.data, model_cfg.cutoff),
                store.sources,
                d.device,
                stress=t.stress_weight > 0,
                autocast=autocast,
            )
            final.update({f"{name}/{k}": v for k, v in res.items()})
    if d.main:
        ck = state(final)
        export_model(ck, run_dir / "model.pt")
        log.metrics(step, final, prefix="final")
        log.summary(final, store.sources)
    log.close()
    return final
