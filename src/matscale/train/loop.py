"""``matscale train``: one function that trains (or resumes) a run from its config.

:func:`train` joins the process group, builds the run (:mod:`matscale.train.run`), resumes it
(:mod:`matscale.train.state`) and calls :func:`fit`, the loop; the step itself is
:func:`matscale.train.step.train_step`.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch

from matscale.config import RunConfig, dump, to_dict
from matscale.errors import RunInterrupted, TrainingError
from matscale.parallel.distributed import (
    Dist,
    all_max,
    finish,
    init_distributed,
    is_peer_failure,
)
from matscale.signals import StopRequest
from matscale.train.checkpoint import (
    checkpoint_path,
    export_model,
    run_dir_lock,
)
from matscale.train.data import (
    loader_for,
    sampler_for,
)
from matscale.train.evaluate import evaluate
from matscale.train.log import HOLDOUT_FAMILY, RunLog
from matscale.train.run import Run, build_run
from matscale.train.schedule import cosine_progress, lr_at
from matscale.train.state import (
    changed_settings,
    check_finite_weights,
    checkpoint,
    last_good_checkpoint,
    resume,
    snapshot,
)
from matscale.train.step import ema_decay_at, ema_update, train_step
from matscale.validation import check_config, run_warnings

# The clock a run's time budget (``train.max_minutes``) reads, in seconds. Kept as one name so
# a test can run the budget on a fake clock: a budget measured on the machine's real clock
# makes a test's step count depend on how fast the machine is.
budget_clock = time.monotonic


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
        list(run.graph.heads),  # batches carry head indices (a fine-tuned model: more heads)
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
    # seconds this process waited for its batches (reading them and building their graphs,
    # with data.workers=0) since the last step, and when it began waiting: logged beside the
    # step's own time, so that a run shows whether its data or its model is the bottleneck
    waited, asked_at = 0.0, time.perf_counter()

    def tick() -> None:  # account the time since the last tick (checkpoints carry it)
        nonlocal clock
        now = budget_clock()
        run.seconds += now - clock
        clock = now

    while True:
        run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
        for g in loader:
            waited += time.perf_counter() - asked_at
            run.batch_in_epoch += 1
            micro.append(g)
            if len(micro) < t.accumulation:
                asked_at = time.perf_counter()
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
            step_began = time.perf_counter()
            stats = train_step(
                par.step_model,
                micro,
                run.optimizer,
                t,
                lr=lr,
                device=d.device,
                autocast=par.autocast,
                hooks=par.hooks,
                explicit_forces=run.cfg.parallel.explicit_forces,
            )
            stats["step_s"] = time.perf_counter() - step_began
            stats["data_s"], waited = waited, 0.0
            run.step += 1
            if "skipped" in stats:
                note_bad_step(run, stats["skipped"], micro)
            else:
                run.bad_in_a_row = 0
                if par.ema is not None:
                    ema_update(par.ema, run.model, ema_decay_at(t.ema_decay or 0.0, run.step))
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
            if (run.step % t.eval_every == 0 or done) and len(run.splits.val):
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
            asked_at = time.perf_counter()  # evaluations and checkpoints are not data time
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
    raise TrainingError(
        f"steps {run.step - run.bad_in_a_row + 1}-{run.step} of {run.cfg.run_dir} all had a "
        f"non-finite {what} and were skipped (train.max_bad_steps={run.cfg.train.max_bad_steps}); "
        f"the last one's structures (store {run.cfg.data.store}, indices {shown}). "
        f"Lower train.lr or check those structures; " + last_good_checkpoint(run)
    )


def _train(
    cfg: RunConfig, d: Dist, *, progress: bool, stop: StopRequest | None = None
) -> dict[str, Any]:
    run = build_run(cfg, d)  # settings checked against the store: nothing is written before
    # one process per run folder: a second `train` of the same name would interleave the
    # first one's metrics and checkpoints
    with run_dir_lock(cfg.run_dir) if d.main else nullcontext():
        return _resume_and_fit(run, progress=progress, stop=stop)


def _resume_and_fit(run: Run, *, progress: bool, stop: StopRequest | None) -> dict[str, Any]:
    """Resume ``run`` from its newest checkpoint, train it to the end, score and export it."""
    cfg, d = run.cfg, run.d
    resumed = resume(run)
    t, run_dir = cfg.train, cfg.run_dir
    # a finished run trains nothing more: its records (config.yaml, the model file's
    # settings and card) keep the settings it was trained with, whatever this command says
    finished = resumed and run.step >= t.steps
    log = RunLog(
        run_dir,
        enabled=d.main,
        progress=progress,
        total=t.steps,
        start=run.step,
        every=t.log_every,
    )
    if d.main:
        if not finished:
            (run_dir / "config.yaml").write_text(dump(cfg))
        log.text(
            f"{'resuming at step ' + str(run.step) if resumed else 'starting'}: "
            f"{sum(p.numel() for p in run.model.parameters()):,} parameters, "
            f"{len(run.splits.train):,} training structures, {len(run.sampler)} batches/epoch "
            f"on each of {d.world} process(es)"
        )
        before = run.resumed_config
        changed = changed_settings(before, to_dict(cfg)) if before is not None else []
        if run.resumed_processes not in (None, d.world):  # each process draws its own batch
            changed.append(
                f"processes: {run.resumed_processes} → {d.world} (the global batch: "
                f"{run.resumed_processes} → {d.world} × data.max_atoms={cfg.data.max_atoms} "
                "atoms at most)"
            )
        if changed and finished:
            log.text(
                f"the run had already finished at step {run.step}: nothing is trained, and its "
                f"records keep the settings it was trained with, not these ({'; '.join(changed)})"
                ". To train with them, give the run another name="
            )
        elif changed:
            log.text(f"resuming with changed settings: {'; '.join(changed)}")
        for warning in [] if finished else run_warnings(cfg, run.store):
            log.text(f"warning: {warning}")
        if cfg.parallel.compile and not finished:
            log.text(
                "the forward pass is compiled (parallel.compile): the first steps and the "
                "first evaluation compile it, minutes on a CPU the first time"
            )
    if run.step < t.steps:
        try:
            fit(run, log, stop)
        except RunInterrupted:
            log.close()  # the caller says why, below the closed progress bar
            raise
    elif not run.metrics and len(run.splits.val):  # a finished run re-evaluates, re-exports
        run.metrics = evaluate_split(run, run.splits.val)
    final = final_metrics(run)
    check_finite_weights(run)
    # gathered on every process: the export is one plain file (of weights: no optimizer)
    ck = snapshot(run, final, optimizer=False)
    if finished:
        ck["config"] = run.resumed_config
    if d.main:
        export_model(ck, run_dir / "model.pt")
        log.metrics(run.step, final, prefix="final")
        log.summary(final, run.store.sources, skipped_steps=run.skipped_steps)
    log.close()
    return final


def final_metrics(run: Run) -> dict[str, float]:
    """The latest validation metrics, and the test, held-out and per-family ones."""
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
    return final
