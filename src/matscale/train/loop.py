"""``matscale train``: one function that builds a run from its config and trains it.

Order of construction (fixed): process group → store and splits → plain model with data
statistics → precision policy → data-parallel wrapper → optimizer → resume → loop. The step
itself is :func:`matscale.train.step.train_step`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from matscale.config import RunConfig, dump, to_dict
from matscale.data.store import Store
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics
from matscale.parallel.distributed import Dist, all_max, finish, init_distributed
from matscale.parallel.plan import (
    load_model_state,
    load_optimizer_state,
    model_state,
    optimizer_state,
    parallelize,
)
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
    par = parallelize(
        model,
        cfg.parallel,
        d,
        train=t,
        conservative=model_cfg.force_head == "conservative",
    )
    ema = par.ema
    optimizer = par.optimizer or make_optimizer(model, t)
    plateau = Plateau(patience=t.plateau_patience, floor=t.min_lr_ratio)
    autocast = par.autocast
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
        load_model_state(model, ck["model"])
        if ema is not None and ck.get("ema") is not None:
            load_model_state(ema, ck["ema"])
        if par.engine is not None:  # DeepSpeed restores its (sharded) optimizer itself
            par.engine.load_checkpoint(
                str(run_dir / "deepspeed"), tag=ck["deepspeed_tag"], load_lr_scheduler_states=False
            )
        else:
            load_optimizer_state(model, optimizer, ck["optimizer"])
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
        # full states, gathered on every process (a collective under FSDP and ZeRO-3)
        with par.gathered():
            weights = model_state(model)
        return {
            "model": weights,
            "ema": model_state(ema) if ema else None,
            "optimizer": None if par.engine is not None else optimizer_state(model, optimizer),
            "deepspeed_tag": f"step-{step:08d}" if par.engine is not None else None,
            "plateau": asdict(plateau),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "config": to_dict(cfg),
            "model_config": to_dict(model_cfg),
            "stats": store.stats,
            "metrics": metrics,
        }

    def evaluate_on(indices: Any) -> dict[str, float]:
        # FSDP gathers parameters in forward: every process must run the same batches
        part = indices if par.lockstep else indices[d.rank :: d.world]
        s = sampler_for(store, part, cfg.data, train=False, seed=0, rank=0, world=1)
        return evaluate(
            ema if ema is not None else model,
            loader_for(store, s, cfg.data, model_cfg.cutoff, model_cfg.heads),
            store.sources,
            d.device,
            stress=t.stress_weight > 0,
            autocast=autocast,
            reduce=not par.lockstep,
        )

    def validate() -> dict[str, float]:
        return evaluate_on(splits.val)

    micro: list[Any] = []
    stop = step >= t.steps  # a finished run only re-evaluates and re-exports
    if stop and not history:
        history = validate()
    # one loader for the run: its workers persist across epochs; each epoch re-reads the
    # sampler, whose position set_epoch sets
    loader = loader_for(
        store,
        sampler,
        cfg.data,
        model_cfg.cutoff,
        model_cfg.heads,
        pin_memory=d.device.type == "cuda",
    )
    while not stop:
        sampler.set_epoch(epoch, batch_in_epoch)
        for g in loader:
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
                par.step_model,
                micro,
                optimizer,
                t,
                lr=lr,
                device=d.device,
                autocast=autocast,
                hooks=par.hooks,
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
            if step % t.checkpoint_every == 0 or done:
                snapshot = state(history)  # on every process: gathering is a collective
                if par.engine is not None:  # DeepSpeed's own format for its optimizer shards
                    par.engine.save_checkpoint(str(run_dir / "deepspeed"), tag=f"step-{step:08d}")
                if d.main:
                    save_checkpoint(snapshot, run_dir, step, t.keep_checkpoints)
            if done:
                stop = True
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    final = dict(history)
    for name in ("test", "holdout"):
        idx = getattr(splits, name)
        if len(idx):
            final.update({f"{name}/{k}": v for k, v in evaluate_on(idx).items()})
    ck = state(final)
    if d.main:
        export_model(ck, run_dir / "model.pt")
        log.metrics(step, final, prefix="final")
        log.summary(final, store.sources)
    log.close()
    return final
