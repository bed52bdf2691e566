"""Every range and relation a run's settings must satisfy, checked in one place before any
work: :func:`check_config` on the config alone (at load), :func:`check_config_for_store`
against the store a run reads (before a model is built).

Types and allowed words are checked when the config is read (:mod:`matscale.config`); here
are the values: a count that must be positive, fractions that must sum to 1, a cutoff the
store was not packed for. Each problem names the dotted key, the value and what is allowed,
so that a user's mistake is one line, never a ``ZeroDivisionError`` from deep in a run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from matscale.errors import ConfigError

if TYPE_CHECKING:
    from matscale.config import RunConfig
    from matscale.data.store import Store

#: The largest cutoff (Å) a model may have: beyond ~12 Å graphs of dense solids hold
#: thousands of edges per atom, and no interatomic potential's data need it.
MAX_CUTOFF = 12.0


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and x >= 1


def _count(x: Any) -> bool:
    return isinstance(x, int) and x >= 0


def _positive(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _non_negative(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x >= 0


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: x is None or rule(x)


def _split(x: Any) -> bool:
    return all(f >= 0 for f in x) and abs(sum(x) - 1) < 1e-6 and x[0] > 0


# (dotted key, rule, what is allowed). One row per setting whose range the type does not say.
RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.split", _split, "three fractions (train, val, test) >= 0 that sum to 1, train > 0"),
    ("data.fraction", lambda x: 0 < x <= 1, "a share in (0, 1]"),
    ("data.max_atoms", _positive_int, "an integer >= 1"),
    ("data.max_edges", _optional(_positive_int), "null or an integer >= 1"),
    (
        "data.mixture",
        lambda x: x is None or (all(_non_negative(w) for w in x.values()) and sum(x.values()) > 0),
        "null or weights >= 0 per source, not all 0",
    ),
    ("data.max_neighbours", _optional(_positive_int), "null or an integer >= 1"),
    ("data.workers", _count, "an integer >= 0"),
    ("data.val_max_structures", _positive_int, "an integer >= 1"),
    ("model.width", _positive_int, "an integer >= 1"),
    ("model.depth", _positive_int, "an integer >= 1"),
    (
        "model.cutoff",
        lambda x: _positive(x) and x <= MAX_CUTOFF,
        f"a radius in (0, {MAX_CUTOFF}] Å",
    ),
    ("model.n_radial", _positive_int, "an integer >= 1"),
    ("model.envelope_p", _positive_int, "an integer >= 1"),
    ("model.vector_channels", _count, "an integer >= 0"),
    ("model.readout_width", _count, "an integer >= 0 (0: width // 2)"),
    ("model.avg_neighbours", _positive, "a number > 0"),
    ("train.steps", _positive_int, "an integer >= 1"),
    ("train.max_minutes", _optional(_positive), "null or minutes > 0"),
    ("train.lr", _positive, "a learning rate > 0"),
    ("train.min_lr_ratio", lambda x: 0 <= x <= 1, "a share in [0, 1]"),
    ("train.warmup_steps", _count, "an integer >= 0"),
    ("train.plateau_patience", _positive_int, "an integer >= 1"),
    ("train.weight_decay", _non_negative, "a number >= 0"),
    ("train.betas", lambda x: all(0 <= b < 1 for b in x), "two numbers in [0, 1)"),
    ("train.grad_clip", _optional(_positive), "null (no clipping) or a norm > 0"),
    ("train.accumulation", _positive_int, "an integer >= 1"),
    ("train.ema_decay", lambda x: x is None or 0 <= x < 1, "null (off) or a decay in [0, 1)"),
    ("train.huber_delta", _positive, "a number > 0"),
    ("train.energy_weight", _non_negative, "a weight >= 0"),
    ("train.force_weight", _non_negative, "a weight >= 0"),
    ("train.stress_weight", _non_negative, "a weight >= 0"),
    ("train.eval_every", _positive_int, "an integer >= 1"),
    ("train.log_every", _positive_int, "an integer >= 1"),
    ("train.checkpoint_every", _positive_int, "an integer >= 1"),
    ("train.keep_checkpoints", _positive_int, "an integer >= 1 (checkpoints kept)"),
    ("train.max_bad_steps", _positive_int, "an integer >= 1"),
    ("parallel.zero_stage", lambda x: x in (1, 2, 3), "1, 2 or 3"),
    ("parallel.threads", _optional(_positive_int), "null (torch's default) or an integer >= 1"),
    ("parallel.edge_chunk", _count, "an integer >= 0 (0: off)"),
    ("parallel.timeout_s", _positive, "seconds > 0"),
)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def problems(cfg: RunConfig) -> list[str]:
    """What is wrong with ``cfg``'s values, one sentence per problem (empty if nothing)."""
    found = []
    for key, rule, allowed in RULES:
        value = _get(cfg, key)
        try:
            ok = bool(rule(value))
        except (TypeError, ValueError):  # a rule may assume the type its row is about
            ok = False
        if not ok:
            found.append(f"{key}={value!r} is not allowed: {allowed}")
    t = cfg.train
    if t.energy_weight + t.force_weight + t.stress_weight <= 0:
        found.append(
            "train.energy_weight, force_weight and stress_weight are all 0: nothing to learn"
        )
    if not cfg.name or "/" in cfg.name or cfg.name in (".", ".."):
        found.append(f"name={cfg.name!r} is not allowed: a folder name without '/'")
    found += zero3_problems(cfg)
    if t.schedule == "plateau" and not cfg.data.split[1] > 0:
        found.append(
            "train.schedule=plateau lowers the learning rate when the validation error stops "
            f"falling, and data.split={list(cfg.data.split)} leaves no validation split: give "
            "it a share, or choose another schedule"
        )
    return found


#: Why DeepSpeed's ZeRO-3 cannot keep an EMA of the weights.
ZERO3_EMA = (
    "DeepSpeed ZeRO-3 partitions the weights an EMA would average: set train.ema_decay=null, "
    "or use parallel.backend=fsdp"
)
#: Why DeepSpeed's ZeRO-3 cannot train conservative forces.
ZERO3_CONSERVATIVE = (
    "DeepSpeed ZeRO-3 cannot train conservative forces (the double backward needs the "
    "parameters ZeRO-3 releases after the forward); use parallel.backend=fsdp, which shards "
    "like ZeRO-3, or model.force_head=direct"
)


def zero3_problems(cfg: RunConfig) -> list[str]:
    """What DeepSpeed ZeRO-3 cannot do that ``cfg`` asks of it (an EMA; conservative forces,
    judged here unless the run starts from a trained model, whose own force head decides, when
    it is built)."""
    p = cfg.parallel
    if p.backend != "deepspeed" or p.zero_stage != 3:
        return []
    found = [ZERO3_EMA] if cfg.train.ema_decay else []
    if cfg.model.force_head == "conservative" and not cfg.train.init_from:
        found.append(ZERO3_CONSERVATIVE)
    return found


def check_config(cfg: RunConfig) -> None:
    """Raise :class:`ConfigError` naming every setting of ``cfg`` out of its range."""
    found = problems(cfg)
    if found:
        raise ConfigError("; ".join(found))


#: Largest force RMS (eV/Å) a source's statistics may show: far beyond any real data (the
#: packer's default filter drops components above 100 eV/Å), and the model's scales follow it.
MAX_FORCE_RMS = 1e3


def check_config_for_store(cfg: RunConfig, store: Store) -> None:
    """Raise :class:`ConfigError` if ``cfg`` asks what ``store`` cannot give: a cutoff larger
    than it was packed for, sources or families it does not hold, too few structures."""
    # here, not at the top: the config (and with it this module) imports without ASE
    from matscale.data.structure import source_name_problem

    where = f"data.store={cfg.data.store}"
    found = []
    if len(store) == 0:
        found.append(f"{where} holds no structures: pack some with `matscale data pack`")
    if cfg.model.cutoff > store.cutoff + 1e-9:
        # edge counts (for batching) and statistics were made at the store's cutoff
        found.append(
            f"model.cutoff={cfg.model.cutoff} Å exceeds the store's cutoff {store.cutoff} Å: "
            f"lower it or repack with --cutoff {cfg.model.cutoff}"
        )
    unknown = sorted(set(cfg.data.holdout_families) - set(store.families))
    if unknown:
        found.append(
            f"data.holdout_families names {unknown}, not families of the store "
            f"(it has {sorted(store.families)})"
        )
    for source in store.sources:
        if why := source_name_problem(source):
            found.append(f"{where}: {why}, and pack again")
    if len(store) and not any(label_counts(store).values()):
        found.append(
            f"{where} holds no energy, forces or stress: nothing to learn (packed with "
            "--require ''? labels under other keys are read with --reader-option energy_key=...)"
        )
    unknown = sorted(set(cfg.data.mixture or {}) - set(store.sources))
    if unknown:
        found.append(
            f"data.mixture names {unknown}, not sources of the store (it has {store.sources})"
        )
    for source, st in store.stats.items():
        rms = st.get("force_rms_eV_per_A", 0.0)
        if not rms <= MAX_FORCE_RMS:  # NaN included
            found.append(
                f"{where}: the force RMS of source {source!r} is {rms:.3g} eV/Å, beyond any "
                f"physical data ({MAX_FORCE_RMS:,.0f}); it sets the model's energy and force "
                "scales, so every step would overflow. A structure with absurd forces was "
                "packed (with --max-force 0?): pack again with --max-force (default 100 eV/Å)"
            )
    if found:
        raise ConfigError("; ".join(found))


def label_counts(store: Store) -> dict[str, int]:
    """How many labels of each target ``store`` holds: structures with an energy or a stress,
    atoms with forces (its statistics' counts, over every source)."""
    stats = store.stats.values()
    return {
        "energy": sum(int(st.get("with_energy", 0)) for st in stats),
        "forces": sum(int(st.get("with_forces_atoms", 0)) for st in stats),
        "stress": sum(int(st.get("with_stress", 0)) for st in stats),
    }


def run_warnings(cfg: RunConfig, store: Store) -> list[str]:
    """What in ``cfg`` will not do what it seems to on ``store``, though training can go on:
    one sentence each (printed when the run starts)."""
    t, found = cfg.train, []
    for target, count in label_counts(store).items():
        key = "force_weight" if target == "forces" else f"{target}_weight"
        weight = getattr(t, key)
        if weight > 0 and count == 0:
            found.append(
                f"train.{key}={weight:g}, and no structure of {cfg.data.store} has "
                f"{target}: that term of the loss is 0"
            )
    if len(store):
        largest = int(store.n_atoms.max())
        if largest > cfg.data.max_atoms:
            found.append(
                f"data.max_atoms={cfg.data.max_atoms}, and the store's largest structure has "
                f"{largest:,} atoms: a structure above the bound is a batch of its own (memory "
                "follows the largest structure, not the bound)"
            )
    if t.steps and t.warmup_steps >= t.steps:
        found.append(
            f"train.warmup_steps={t.warmup_steps} is not below train.steps={t.steps}: the "
            f"learning rate never reaches train.lr={t.lr:g} and is never annealed"
        )
    return found + parallel_warnings(cfg)


def parallel_warnings(cfg: RunConfig) -> list[str]:
    """``parallel.*`` settings that the chosen backend ignores, or that slow a run down."""
    from matscale.config import ParallelConfig  # here: config imports this module

    p, found = cfg.parallel, []
    if p.backend != "deepspeed" and p.zero_stage != ParallelConfig().zero_stage:
        found.append(
            f"parallel.zero_stage={p.zero_stage} is DeepSpeed's setting: ignored with "
            f"parallel.backend={p.backend} (fsdp shards like ZeRO-3)"
        )
    if p.cpu_offload and p.backend not in ("fsdp", "deepspeed"):
        found.append(
            f"parallel.cpu_offload is ignored with parallel.backend={p.backend}: fsdp and "
            "deepspeed offload"
        )
    cores = os.cpu_count() or 1
    if p.threads is not None and p.threads > cores:
        found.append(
            f"parallel.threads={p.threads} on {cores} cores: threads beyond the cores only "
            "wait for each other"
        )
    return found
