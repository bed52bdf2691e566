"""``matscale train``: one function that builds a run from its config and trains it.

Order of construction (fixed): process group → store and splits → plain model with data
statistics → precision policy → data-parallel wrapper → optimizer → resume → loop. The step
itself is :func:`matscale.train.step.train_step`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from matscale.config import ConfigError, RunConfig, dump, to_dict
from matscale.data.sampler import BatchSampler
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from matscale.errors import RunInterrupted, TrainingError
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics, upgrade_config
from matscale.parallel.distributed import (
    Dist,
    all_max,
    finish,
    hardware,
    init_distributed,
    is_peer_failure,
)
from matscale.parallel.plan import (
    Parallel,
    load_model_state,
    load_optimizer_state,
    local_states,
    model_state,
    optimizer_state,
    parallelize,
    set_local_states,
)
from matscale.signals import StopRequest
from matscale.train.checkpoint import (
    checkpoint_path,
    export_model,
    list_checkpoints,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
    set_rng_state,
)
from matscale.train.data import (
    Splits,
    graph_settings_for,
    loader_for,
    make_splits,
    sampler_for,
)
from matscale.train.evaluate import evaluate
from matscale.train.log import HOLDOUT_FAMILY, RunLog
from matscale.train.schedule import Plateau, cosine_progress, lr_at
from matscale.train.step import ema_update, make_optimizer, train_step
from matscale.validation import check_config, check_config_for_store

# The clock a run's time budget (``train.max_minutes``) reads, in seconds. Kept as one name so
# a test can run the budget on a fake clock: a budget measured on the machine's real clock
# makes a test's step count depend on how fast the machine is.
budget_clock = time.monotonic


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

    @property
    def sharded(self) -> bool:
        """Checkpoints hold per-process shards (FSDP) rather than gathered states."""
        return self.cfg.parallel.backend == "fsdp"


def train(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run ``cfg``; returns the final metrics. Rank 0 writes the run
    directory: config.yaml, metrics.jsonl, TensorBoard events, checkpoints/, model.pt."""
    check_config(cfg)  # before any work (also done at load: configs built in Python)
    d = init_distributed(cfg.parallel.backend, cfg.parallel.timeout_s)
    failed = True
    try:
        with StopRequest() as stop:
            final = _train(cfg, d, progress=progress, stop=stop)
        failed = False
        return final
    except RuntimeError as exc:
        if d.world > 1 and is_peer_failure(exc):  # the cause is another process's error
            raise TrainingError(
                f"rank {d.rank} of {d.world}: another process of the run failed or stopped "
                f"answering (its own error, printed by it, says why; a hang fails after "
                f"parallel.timeout_s={cfg.parallel.timeout_s:g} s): {str(exc).splitlines()[0]}"
            ) from exc
        raise
    finally:
        # a failed process leaves at once: a barrier would wait for peers that never come
        finish(failed=failed)


def check_splits(splits: Splits, cfg: RunConfig, n_structures: int) -> None:
    """Refuse splits that would train or evaluate on nothing: a part given a share of the
    data that rounds to no structure (a tiny store), so that no run ends in a blank table."""
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
    if cfg.parallel.threads:
        torch.set_num_threads(cfg.parallel.threads)
    torch.manual_seed(t.seed)
    store = Store(cfg.data.store)
    check_config_for_store(cfg, store)
    splits = make_splits(store, cfg.data)
    check_splits(splits, cfg, len(store))
    model_cfg = model_config_for(cfg, store)
    model = EGNN(model_cfg)
    set_statistics(model, store.stats)
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
        graph=graph_settings_for(store, cfg.data, model_cfg),
        model=model,
        par=par,
        optimizer=par.optimizer or make_optimizer(model, t),
        sampler=sampler,
        plateau=Plateau(patience=t.plateau_patience, floor=t.min_lr_ratio),
    )


def resume(run: Run) -> bool:
    """Load the run directory's newest checkpoint into ``run`` (on every process); False if
    there is none. Checkpoints load whatever backend or world size wrote them."""
    found = list_checkpoints(run.cfg.run_dir)
    if not found:
        return False
    ck = load_checkpoint(found[-1])
    saved, now = upgrade_config(ck["config"]["model"]), to_dict(run.cfg)["model"]
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:  # the weights would not fit, or would silently mean another model
        fields = ", ".join(f"model.{k}" for k in changed)
        raise ConfigError(
            f"{run.cfg.run_dir} holds checkpoints of another model ({fields} differ); "
            "give the run another name= or delete that folder"
        )
    par, model, optimizer = run.par, run.model, run.optimizer
    if ck.get("sharded"):  # FSDP's shards, resharded to this run
        own = par.engine is None
        states = local_states(model, optimizer if own else None, par.ema)
        load_sharded(states, found[-1].parent / ck["sharded"])
        set_local_states(model, optimizer if own else None, par.ema, states)
    else:
        load_model_state(model, ck["model"])
        if par.ema is not None and ck.get("ema") is not None:
            load_model_state(par.ema, ck["ema"])
        if par.engine is None:
            load_optimizer_state(model, optimizer, ck["optimizer"])
    if par.engine is not None:  # DeepSpeed restores its (sharded) optimizer itself
        par.engine.load_checkpoint(
            str(run.cfg.run_dir / "deepspeed"),
            tag=ck["deepspeed_tag"],
            load_lr_scheduler_states=False,
        )
    run.plateau = Plateau(**ck["plateau"])
    run.step, run.epoch, run.batch_in_epoch = ck["step"], ck["epoch"], ck["batch_in_epoch"]
    run.metrics = ck.get("metrics", {})
    run.seconds = ck.get("train_seconds", 0.0)
    run.schedule_progress = ck.get("schedule_progress", 0.0)
    run.skipped_steps = ck.get("skipped_steps", 0)
    set_rng_state(ck["rng"])
    return True


def snapshot(run: Run, metrics: dict[str, Any], *, gather: bool = True) -> dict[str, Any]:
    """The checkpoint of ``run`` as it stands. With ``gather``, full model, EMA and optimizer
    states (a collective under FSDP and ZeRO-3: call on every process); without, only the
    rest (the states then go to :func:`save_sharded`)."""
    par = run.par
    states: dict[str, Any] = {"model": None, "ema": None, "optimizer": None}
    if gather:
        with par.gathered():
            states["model"] = model_state(run.model)
        states["ema"] = model_state(par.ema) if par.ema is not None else None
        if par.engine is None:
            states["optimizer"] = optimizer_state(run.model, run.optimizer)
    return {
        **states,
        "sharded": None,
        "deepspeed_tag": f"step-{run.step:08d}" if par.engine is not None else None,
        "plateau": asdict(run.plateau),
        "step": run.step,
        "epoch": run.epoch,
        "batch_in_epoch": run.batch_in_epoch,
        "config": to_dict(run.cfg),
        "model_config": to_dict(run.model_cfg),
        "graph": run.graph.to_dict(),
        "stats": run.store.stats,
        "metrics": metrics,
        "train_seconds": run.seconds,
        "schedule_progress": run.schedule_progress,
        "skipped_steps": run.skipped_steps,
        "train_structures": _structures_per_source(run),
        "hardware": hardware(run.d),
    }


def _structures_per_source(run: Run) -> dict[str, int]:
    """Training-split structures of each source (what each head learned from)."""
    counts = np.bincount(run.store.source_ids[run.splits.train], minlength=len(run.store.sources))
    return {name: int(c) for name, c in zip(run.store.sources, counts, strict=True)}


def checkpoint(run: Run) -> None:
    """Write the checkpoint of the current step (on every process)."""
    check_finite_weights(run)
    run_dir, step = run.cfg.run_dir, run.step
    ck = snapshot(run, run.metrics, gather=not run.sharded)
    if run.sharded:
        states = local_states(run.model, run.optimizer, run.par.ema)
        ck["sharded"] = save_sharded(states, run_dir, step).name
    if run.par.engine is not None:  # DeepSpeed's own format for its optimizer shards
        run.par.engine.save_checkpoint(str(run_dir / "deepspeed"), tag=f"step-{step:08d}")
    if run.d.main:
        save_checkpoint(ck, run_dir, step, run.cfg.train.keep_checkpoints)


def evaluate_split(run: Run, indices: Any) -> dict[str, float]:
    """Errors on the structures ``indices`` of the store, with the EMA weights if any,
    reduced over processes."""
    d, par = run.d, run.par
    # FSDP gathers parameters in forward: every process must run the same batches
    part = indices if par.lockstep else indices[d.rank :: d.world]
    s = sampler_for(run.store, part, run.cfg.data, train=False, seed=0, rank=0, world=1)
    return evaluate(
        par.ema if par.ema is not None else run.model,
        loader_for(run.store, s, run.cfg.data, run.graph),
        run.store.sources,
        d.device,
        stress=run.cfg.train.stress_weight > 0,
        autocast=par.autocast,
        reduce=not par.lockstep,
    )


def fit(run: Run, log: RunLog, stop: StopRequest | None = None) -> None:
    """Train from ``run``'s position to ``train.steps`` (or the time limit), validating and
    checkpointing on schedule and at the end. A ``stop`` request (a signal) ends the step,
    writes a checkpoint and raises :class:`RunInterrupted`."""
    t, d, par = run.cfg.train, run.d, run.par
    budget = 60 * t.max_minutes if t.max_minutes else math.inf  # seconds of this invocation
    started = budget_clock()
    # annealing in time compresses what is left of the decay into this invocation's budget
    in_time = math.isfinite(budget) and t.schedule == "cosine-time"
    start_progress = run.schedule_progress
    time_fraction = start_progress if in_time else 0.0
    # one loader for the run: its workers persist across epochs; each epoch re-reads the
    # sampler, whose position set_epoch sets
    loader = loader_for(
        run.store,
        run.sampler,
        run.cfg.data,
        run.graph,
        pin_memory=d.device.type == "cuda",
    )
    micro: list[Any] = []
    clock = budget_clock()

    def tick() -> None:  # account the time since the last tick (checkpoints carry it)
        nonlocal clock
        now = budget_clock()
        run.seconds += now - clock
        clock = now

    while True:
        run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
        for g in loader:
            run.batch_in_epoch += 1
            micro.append(g)
            if len(micro) < t.accumulation:
                continue
            lr = run.plateau.scale * lr_at(
                run.step,
                lr=t.lr,
                steps=t.steps,
                warmup=t.warmup_steps,
                kind=t.schedule,
                min_ratio=t.min_lr_ratio,
                time_fraction=time_fraction,
            )
            run.schedule_progress = cosine_progress(
                run.step, steps=t.steps, warmup=t.warmup_steps, time_fraction=time_fraction
            )
            stats = train_step(
                par.step_model,
                micro,
                run.optimizer,
                t,
                lr=lr,
                device=d.device,
                autocast=par.autocast,
                hooks=par.hooks,
            )
            run.step += 1
            if "skipped" in stats:
                note_bad_step(run, stats["skipped"], micro)
            else:
                run.bad_in_a_row = 0
                if par.ema is not None:
                    ema_update(par.ema, run.model, t.ema_decay or 0.0)
            micro = []
            log.step(run.step, stats, lr)
            # every process must stop at the same step and use the same learning rate,
            # whatever its own clock says: the slowest clock decides
            used = (budget_clock() - started) / budget  # share of the time budget
            asked = stop is not None and stop.requested  # a signal to any process stops all
            flags = all_max(torch.tensor([float(run.step >= t.steps or used > 1), used, asked]))
            done = bool(flags[0])
            if flags[2] and not done:
                tick()
                checkpoint(run)
                name = (stop.signal_name if stop is not None else None) or "a signal to a peer"
                path = checkpoint_path(run.cfg.run_dir, run.step)
                raise RunInterrupted(name, run.step, str(path))
            if in_time:
                time_fraction = start_progress + (1 - start_progress) * min(1.0, float(flags[1]))
            if run.step % t.eval_every == 0 or done:
                run.metrics = evaluate_split(run, run.splits.val)
                if t.schedule == "plateau":
                    m = run.metrics
                    run.plateau.update(m.get("forces_mae_meV_per_A", m["energy_mae_meV_per_atom"]))
                log.metrics(run.step, run.metrics, prefix="val")
            if run.step % t.checkpoint_every == 0 or done:
                tick()
                checkpoint(run)
            if done:
                return
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0


def note_bad_step(run: Run, what: str, micro: list[Any]) -> None:
    """Count a step skipped because its ``what`` (loss or gradient) was not finite; stop the
    run once ``train.max_bad_steps`` come in a row, naming the step and the structures."""
    run.skipped_steps += 1
    run.bad_in_a_row += 1
    if run.bad_in_a_row < run.cfg.train.max_bad_steps:
        return
    index = sorted(int(i) for g in micro for i in g.index.tolist())
    shown = ", ".join(map(str, index[:20])) + (", ..." if len(index) > 20 else "")
    good = list_checkpoints(run.cfg.run_dir)
    raise TrainingError(
        f"steps {run.step - run.bad_in_a_row + 1}-{run.step} of {run.cfg.run_dir} all had a "
        f"non-finite {what} and were skipped (train.max_bad_steps={run.cfg.train.max_bad_steps}); "
        f"the last one's structures (store {run.cfg.data.store}, indices {shown}). "
        f"Lower train.lr or check those structures; "
        + (f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written")
    )


def check_finite_weights(run: Run) -> None:
    """Raise :class:`TrainingError` if any weight (model or EMA) of any process is not finite:
    nothing non-finite is ever written as a checkpoint or a model (a collective)."""
    local = 0.0
    for module in (run.model, run.par.ema):
        for p in module.parameters() if module is not None else ():
            x = getattr(p, "to_local", lambda p=p: p)()  # this process's shard under FSDP
            if not bool(torch.isfinite(x.detach()).all()):
                local = 1.0
                break
    if bool(all_max(torch.tensor(local))):
        good = list_checkpoints(run.cfg.run_dir)
        raise TrainingError(
            f"the weights of {run.cfg.run_dir} are not finite at step {run.step}: nothing was "
            "written. Lower train.lr (or set train.grad_clip); "
            + (f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written")
        )


def _train(
    cfg: RunConfig, d: Dist, *, progress: bool, stop: StopRequest | None = None
) -> dict[str, Any]:
    run = build_run(cfg, d)
    resumed = resume(run)
    t, run_dir = cfg.train, cfg.run_dir
    log = RunLog(
        run_dir,
        enabled=d.main,
        progress=progress,
        total=t.steps,
        start=run.step,
        every=t.log_every,
    )
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump(cfg))
        log.text(
            f"{'resuming at step ' + str(run.step) if resumed else 'starting'}: "
            f"{sum(p.numel() for p in run.model.parameters()):,} parameters, "
            f"{len(run.splits.train):,} training structures, {len(run.sampler)} batches/epoch "
            f"on each of {d.world} process(es)"
        )
    if run.step < t.steps:
        try:
            fit(run, log, stop)
        except RunInterrupted:
            log.close()  # the caller says why, below the closed progress bar
            raise
    elif not run.metrics:  # a finished run only re-evaluates and re-exports
        run.metrics = evaluate_split(run, run.splits.val)
    final = dict(run.metrics)
    for name in ("test", "holdout"):
        idx = getattr(run.splits, name)
        if len(idx):
            final.update({f"{name}/{k}": v for k, v in evaluate_split(run, idx).items()})
    # each held-out family on its own too: pooled, the family with the largest errors hides
    # how the others carry over
    for family in run.cfg.data.holdout_families:
        idx = run.splits.holdout
        idx = idx[run.store.family_ids[idx] == run.store.families.index(family)]
        if len(idx):
            metrics = evaluate_split(run, idx)
            final.update({f"{HOLDOUT_FAMILY}{family}/{k}": v for k, v in metrics.items()})
    check_finite_weights(run)
    ck = snapshot(run, final)  # gathered on every process: the export is one plain file
    if d.main:
        export_model(ck, run_dir / "model.pt")
        log.metrics(run.step, final, prefix="final")
        log.summary(final, run.store.sources, skipped_steps=run.skipped_steps)
    log.close()
    return final
