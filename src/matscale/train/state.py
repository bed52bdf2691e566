"""The one owner of a run's training-checkpoint state.

What a checkpoint holds (:func:`snapshot`), writing it on every process (:func:`checkpoint`),
what must never be written (:func:`check_finite_weights`) or resumed (:func:`check_resumable`),
and restoring a run from the newest one (:func:`resume`). Files, atomic writes and the model
file are :mod:`matscale.train.checkpoint`'s; the full and sharded state dicts of every backend
are :mod:`matscale.parallel.plan`'s.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from matscale.config import ConfigError, to_dict
from matscale.data.combine import describe_parts
from matscale.errors import TrainingError
from matscale.models.egnn import upgrade_config
from matscale.parallel.distributed import (
    all_max,
    hardware,
)
from matscale.parallel.plan import (
    load_model_state,
    load_optimizer_state,
    local_states,
    model_state,
    optimizer_state,
    set_local_states,
)
from matscale.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_sharded,
    save_checkpoint,
    save_sharded,
    set_rng_state,
)
from matscale.train.data import Splits
from matscale.train.run import Run
from matscale.train.schedule import Plateau


def resume(run: Run) -> bool:
    """Load the run directory's newest checkpoint into ``run`` (on every process); False if
    there is none. Checkpoints load whatever backend or world size wrote them."""
    found = list_checkpoints(run.cfg.run_dir)
    if not found:
        return False
    ck = load_checkpoint(found[-1])
    check_resumable(run, ck)
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
    run.resumed_config = ck["config"]
    run.resumed_processes = ck.get("hardware", {}).get("processes")
    set_rng_state(ck["rng"])
    return True


def changed_settings(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``section.key: before → now`` for every setting of two run configs (``to_dict``'s)
    that differs, but where the run's files go (``out_dir``)."""
    changed = []
    for section in sorted(set(before) | set(now)):
        if section == "out_dir":
            continue
        a, b = before.get(section), now.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{section}.{k}: {a.get(k)!r} → {b.get(k)!r}"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]  # fmt: skip
        elif a != b:
            changed.append(f"{section}: {a!r} → {b!r}")
    return changed


#: Data settings a run cannot change when it resumes: they decide which structures are
#: training, validation, test and held out (batching settings may change).
SPLIT_KEYS = ("split", "split_seed", "holdout_families")


def check_resumable(run: Run, ck: dict[str, Any]) -> None:
    """Refuse to resume ``ck`` into ``run`` if the model differs (the weights would not fit,
    or would silently mean another model) or the data do: another store's content (heads
    would be matched to other sources by position) or other splits (new validation and test
    structures would overlap the old training ones)."""
    saved, now = upgrade_config(ck["config"]["model"]), to_dict(run.cfg)["model"]
    changed = [f"model.{k}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    # a run started from a trained model (train.init_from) takes that model's architecture and
    # heads, not model.*: compare what was built
    built_then, built_now = ck.get("model_config"), to_dict(run.model_cfg)
    if not changed and built_then is not None and built_then != built_now:
        keys = sorted(k for k in set(built_then) | set(built_now)
                      if built_then.get(k) != built_now.get(k))  # fmt: skip
        # built from the store (its sources, its neighbour count) or from a trained model
        source = "train.init_from" if run.cfg.train.init_from else "the store"
        changed.append(f"the model built from {source} ({', '.join(keys)})")
    saved_init = ck["config"].get("train", {}).get("init_from")
    if saved_init != run.cfg.train.init_from:
        changed.append(f"train.init_from (was {saved_init})")
    saved_data, now_data = ck["config"]["data"], to_dict(run.cfg)["data"]
    changed += [f"data.{k}" for k in SPLIT_KEYS if saved_data.get(k) != now_data.get(k)]
    if ck.get("store_content", run.store.content_id) != run.store.content_id:
        changed.append(f"the content of data.store (was {saved_data['store']})")
    backend = ck["config"].get("parallel", {}).get("backend")
    if (ck.get("deepspeed_tag") is not None) != (run.par.engine is not None):
        # DeepSpeed keeps its optimizer state in its own shards, the others in the checkpoint
        if backend == "deepspeed":
            how = "DeepSpeed keeps in its own files: resume it with parallel.backend=deepspeed"
        else:
            how = f"DeepSpeed cannot read: resume it with parallel.backend={backend} (or ddp, fsdp)"
        raise ConfigError(
            f"{run.cfg.run_dir} holds a run trained with parallel.backend={backend}, whose "
            f"optimizer state {how}; or start a new run from its model (train.init_from)"
        )
    if changed:
        raise ConfigError(
            f"{run.cfg.run_dir} holds checkpoints of another run ({', '.join(changed)} "
            "differ); give the run another name= or delete that folder"
        )


def snapshot(
    run: Run, metrics: dict[str, Any], *, gather: bool = True, optimizer: bool = True
) -> dict[str, Any]:
    """The checkpoint of ``run`` as it stands. With ``gather``, full model, EMA and (with
    ``optimizer``) optimizer states (a collective under FSDP and ZeRO-3: call on every
    process); without, only the rest (the states then go to :func:`save_sharded`). The model
    file needs no optimizer state: twice the weights again, which a sharded billion-parameter
    run cannot gather onto one process besides its shards."""
    par = run.par
    states: dict[str, Any] = {"model": None, "ema": None, "optimizer": None}
    if gather:
        with par.gathered():
            states["model"] = model_state(run.model)
        states["ema"] = model_state(par.ema) if par.ema is not None else None
        if par.engine is None and optimizer:
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
        "labelled_by": run.store.labelled_by,
        "store_content": run.store.content_id,
        "store_parts": describe_parts(run.store.path),
        "metrics": metrics,
        "train_seconds": run.seconds,
        "schedule_progress": run.schedule_progress,
        "skipped_steps": run.skipped_steps,
        "train_structures": _structures_per_source(run),
        # how many structures each reported error averages over: a test error over 8
        # structures is noise, over 8,000 a figure
        "split_structures": {name: len(getattr(run.splits, name)) for name in Splits.FIELDS},
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
        raise TrainingError(
            f"the weights of {run.cfg.run_dir} are not finite at step {run.step}: nothing was "
            "written. Lower train.lr (or set train.grad_clip); " + last_good_checkpoint(run)
        )


def last_good_checkpoint(run: Run) -> str:
    """Where a stopped run would resume from, in words (for error messages)."""
    found = list_checkpoints(run.cfg.run_dir)
    return f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was written"
