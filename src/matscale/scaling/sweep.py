"""A sweep over model size × data size, expanded into one :class:`RunConfig` per run.

A sweep is a YAML file of :class:`SweepConfig`: a ``base`` run config (the keys of
``matscale train``), the model sizes (parameter targets or explicit width/depth), the nested
data fractions, the seeds and one training budget (epochs, optionally with a floor in steps,
or steps) shared by every run::

    name: cpu
    base: {data: {store: data/store-default}, model: {depth: 3}}
    sizes: [{params: 1.5e3}, {params: 1e4}, {width: 64, depth: 3}]
    fractions: [0.02, 0.05, 0.1, 0.2]
    epochs: 10

:func:`plan` resolves each run against the store: the width of a parameter target, the steps
of an epoch budget, the evaluation schedule, and a hash of the resolved config that names the
run in the results table (``matscale sweep run`` skips runs whose hash is already there).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from matscale.config import ConfigError, RunConfig, load_tree, to_dict, with_overrides
from matscale.data.store import Store
from matscale.models.egnn import EGNNConfig
from matscale.models.size import (
    non_embedding_parameters,
    parameter_count,
    training_flops,
    width_for,
)
from matscale.train.data import make_splits, sampler_for
from matscale.train.run import model_config_for
from matscale.validation import problems as config_problems


@dataclass(kw_only=True)
class ModelSize:
    """One model size of a sweep: a parameter target, or an explicit width (and depth)."""

    params: float | None = None
    """Target of non-embedding parameters (the N of the fits); the width is solved for at
    ``depth``. Exclusive with ``width``."""
    width: int | None = None
    """Explicit width (hidden features)."""
    depth: int | None = None
    """Interaction layers (None: the base config's)."""
    set: tuple[str, ...] = ()
    """Dotted run-config overrides for this size only, e.g.
    ``[parallel.activation_checkpointing=true, data.max_atoms=2048]``."""


@dataclass(kw_only=True)
class SlurmConfig:
    """What ``matscale sweep slurm`` writes into the array job's ``#SBATCH`` lines."""

    nodes: int = 1
    """Nodes per run."""
    gpus_per_node: int = 1
    """Processes (one per GPU, launched by ``srun``) per node."""
    time: str = "04:00:00"
    """Wall-clock limit per array task (a run stopped by it resumes from its checkpoint when
    the task is requeued or the script resubmitted)."""
    grace_s: int = 300
    """Seconds before the time limit at which SLURM sends SIGUSR1: enough to finish a step
    and write a checkpoint, after which the task requeues itself."""
    partition: str | None = None
    account: str | None = None
    concurrent: int | None = None
    """Most array tasks running at once (``%N``); None: no bound."""
    setup: str = "source .venv/bin/activate"
    """Shell lines run before each task (modules, environment)."""


@dataclass(kw_only=True)
class SweepConfig:
    """Model sizes × data fractions × seeds, each trained with one budget from ``base``."""

    name: str = "sweep"
    """Sweep name: runs and results go to ``out_dir/name``."""
    out_dir: str = "data/sweeps"
    base: RunConfig = field(default_factory=RunConfig)
    """The run every sweep point starts from (``name`` and ``out_dir`` are set per run)."""
    sizes: tuple[ModelSize, ...] = ()
    fractions: tuple[float, ...] = (1.0,)
    """Shares of the training split; smaller ones are nested in larger ones."""
    seeds: tuple[int, ...] = (0,)
    """Seeds of initialisation and sampling (the split stays fixed)."""
    epochs: float | None = None
    """Budget per run in passes over its training data (the paper: 10). Exclusive with
    ``steps``."""
    steps: int | None = None
    """Budget per run in optimizer steps, whatever its data size."""
    min_steps: int = 0
    """Floor of an epoch budget in optimizer steps: a run whose epochs come to fewer trains
    this many. On a data axis of two decades, a fixed number of epochs gives the smallest
    fractions a few hundred steps, and their error then measures the step count, not the
    data; with the floor they train until their data limits them (they repeat it)."""
    processes: int = 1
    """Processes each run trains on; an epoch budget's steps are counted per process."""
    evaluations: int = 5
    """Validation evaluations (and checkpoints) per run, evenly spaced."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def sweep_dir(self) -> Path:
        """``out_dir / name``: runs/, results.jsonl, figures."""
        return Path(self.out_dir) / self.name


@dataclass(frozen=True)
class PlannedRun:
    """One point of a sweep, resolved against the store."""

    index: int
    config: RunConfig
    model: EGNNConfig
    """The model as trained (heads and neighbour count from the store)."""
    fraction: float
    seed: int
    train_structures: int
    train_atoms: int
    """Atoms in the run's training data: the data size D of the fits."""
    config_hash: str
    training_flops: int
    """Matmul FLOPs the run will train for (:func:`matscale.models.size.training_flops`),
    estimated as its steps × the atoms and edges of a mean batch of its training data; the
    results row records what it did."""

    @property
    def parameters(self) -> int:
        """Trainable parameters of the run's model."""
        return parameter_count(self.model)

    @property
    def non_embedding_parameters(self) -> int:
        """Parameters outside the element embedding: the N of the fits."""
        return non_embedding_parameters(self.model)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepConfig:  # type: ignore[assignment]
    """Read a sweep YAML file, apply dotted ``key=value`` overrides, and check it."""
    sweep: SweepConfig = load_tree(SweepConfig, path, overrides, where=f"{path}: ")
    check_sweep(sweep, where=str(path))
    return sweep


def check_sweep(sweep: SweepConfig, where: str = "sweep") -> None:
    """Raise :class:`ConfigError` naming every field of a sweep that cannot be planned, all
    on one line (one edit fixes them all, not one per run of the command)."""
    problems = []
    if (sweep.epochs is None) == (sweep.steps is None):
        problems.append("set exactly one budget, epochs or steps")
    elif (sweep.epochs is not None and sweep.epochs <= 0) or (
        sweep.steps is not None and sweep.steps < 1
    ):
        problems.append("the budget must be positive")
    if not sweep.sizes:
        problems.append("sizes is empty")
    base_problems = config_problems(sweep.base)
    problems += [f"base: {p}" for p in base_problems]
    for k, s in enumerate(sweep.sizes):
        if (s.params is None) == (s.width is None):
            problems.append(f"sizes[{k}]: set exactly one of params and width")
        elif s.params is not None and not 0 < s.params < math.inf:
            problems.append(f"sizes[{k}]: params must be a positive number, got {s.params}")
        elif s.width is not None and s.width < 1:
            problems.append(f"sizes[{k}]: width must be at least 1, got {s.width}")
        if s.depth is not None and s.depth < 1:
            problems.append(f"sizes[{k}]: depth must be at least 1, got {s.depth}")
        if base_problems:  # each size's overrides would repeat the base's problems
            continue
        try:
            with_overrides(sweep.base, s.set)
        except ConfigError as exc:
            problems.append(f"sizes[{k}].set: {exc}")
    if not sweep.fractions:
        problems.append("fractions is empty")
    if not sweep.seeds:
        problems.append("seeds is empty")
    problems += [f"fractions: {f} must lie in (0, 1]" for f in sweep.fractions if not 0 < f <= 1]
    if sweep.processes < 1:
        problems.append(f"processes must be at least 1, got {sweep.processes}")
    if sweep.min_steps < 0 or (sweep.min_steps and sweep.epochs is None):
        problems.append("min_steps is a floor of an epoch budget (>= 0, with epochs)")
    if sweep.evaluations < 1:
        problems.append("evaluations must be at least 1")
    if problems:
        raise ConfigError(f"{where}: {'; '.join(problems)}")


def config_hash(cfg: RunConfig) -> str:
    """A short hash of everything that defines a run's result (not its name or directory).

    Only the keys that differ from :class:`RunConfig`'s defaults enter it: a key added to
    the config later, at a default that changes nothing, must not make every finished run
    of a sweep look new (they would be evaluated again and listed twice)."""
    data = _changed(to_dict(cfg), to_dict(RunConfig()))
    data.pop("name", None), data.pop("out_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _changed(data: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The part of the nested dict ``data`` whose values differ from ``defaults``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        default = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(default, dict):
            sub = _changed(value, default)
            if sub:
                out[key] = sub
        elif value != default:
            out[key] = value
    return out


_MISSING = object()


def plan(sweep: SweepConfig, store: Store | None = None) -> list[PlannedRun]:
    """Every run of ``sweep`` in a fixed order (size, then fraction, then seed).

    Each run's budget is exact: ``train.max_minutes`` is cleared (a wall-clock cut would make
    the result depend on the machine), and the warm-up is shortened to at most a tenth of a
    short run."""
    check_sweep(sweep)
    store = store or Store(sweep.base.data.store)
    runs = []
    points = itertools.product(sweep.sizes, sorted(sweep.fractions), sweep.seeds)
    for index, (size, fraction, seed) in enumerate(points):
        base = with_overrides(sweep.base, size.set) if size.set else sweep.base
        model = _sized(base, size, store)
        data = replace(base.data, fraction=fraction)
        cfg = replace(
            base,
            name=f"w{model.width}-d{model.depth}-f{fraction:g}-s{seed}",
            out_dir=str(sweep.sweep_dir / "runs"),
            data=data,
            model=model,
        )
        train = make_splits(store, data).train
        batches = _batches_per_epoch(sweep, cfg, store, train, seed)  # per process
        steps = sweep.steps or max(1, sweep.min_steps, math.ceil((sweep.epochs or 0) * batches))
        every = max(1, math.ceil(steps / sweep.evaluations))
        cfg = replace(
            cfg,
            train=replace(
                cfg.train,
                steps=steps,
                seed=seed,
                max_minutes=None,
                eval_every=every,
                checkpoint_every=every,
                warmup_steps=min(cfg.train.warmup_steps, steps // 10),
            ),
        )
        resolved = model_config_for(cfg, store)
        atoms = int(np.asarray(store.n_atoms)[train].sum())
        edges = int(np.asarray(store.n_edges, dtype=np.int64)[train].sum())
        passes = steps / max(batches, 1.0)  # over the training data (an epoch's atoms, edges)
        flops = training_flops(resolved, round(atoms * passes), round(edges * passes))
        runs.append(
            PlannedRun(
                index=index,
                config=cfg,
                model=resolved,
                fraction=fraction,
                seed=seed,
                train_structures=len(train),
                train_atoms=atoms,
                config_hash=config_hash(cfg),
                training_flops=flops,
            )
        )
    return _distinct_names(runs)


def _distinct_names(runs: list[PlannedRun]) -> list[PlannedRun]:
    """``runs`` with run names that differ: runs are named by width, depth, fraction and
    seed, so two sizes of one width and depth that differ in their ``set`` shared one folder
    (the second refused to resume the first's, or replaced it). Such names get the config's
    hash; two sizes that plan the very same run are refused."""
    by_name: dict[str, list[PlannedRun]] = {}
    for r in runs:
        by_name.setdefault(r.config.name, []).append(r)
    out = []
    for r in runs:
        same = by_name[r.config.name]
        if len(same) == 1:
            out.append(r)
            continue
        if len({x.config_hash for x in same}) < len(same):
            raise ConfigError(
                f"runs {[x.index for x in same]} are the same run ({r.config.name}): two sizes "
                "plan the same model and settings; remove one"
            )
        name = f"{r.config.name}-{r.config_hash[:6]}"
        out.append(replace(r, config=replace(r.config, name=name)))
    return out


def _sized(base: RunConfig, size: ModelSize, store: Store) -> EGNNConfig:
    """The model of ``size``: an explicit width, or the width whose non-embedding parameter
    count (with the store's heads) is closest to the target."""
    depth = size.depth if size.depth is not None else base.model.depth
    if size.width is not None:
        return replace(base.model, width=size.width, depth=depth)
    resolved = model_config_for(base, store)
    fields = {k: v for k, v in vars(resolved).items() if k not in ("width", "depth")}
    assert size.params is not None
    width = width_for(size.params, depth=depth, non_embedding=True, **fields)
    return replace(base.model, width=width, depth=depth)


def _batches_per_epoch(
    sweep: SweepConfig, cfg: RunConfig, store: Store, train: np.ndarray, seed: int
) -> float:
    """Optimizer steps of one pass over ``train`` on each process."""
    sampler = sampler_for(
        store, train, cfg.data, train=True, seed=seed, rank=0, world=sweep.processes
    )
    return len(sampler) / cfg.train.accumulation


def describe_plan(
    runs: list[PlannedRun], done: Collection[str] = (), finished: Sequence[dict[str, Any]] = ()
) -> str:
    """A table of the planned runs (a ✓ marks those whose results are in) with the matmul
    FLOPs each will train for, and the time the unfinished ones need: at the rate (training
    FLOPs per second of training) of the ``finished`` results row nearest in parameters, as
    measured on the machine that ran it."""
    lines = [
        f"{'#':>3}  {'run':<24} {'params':>11} {'non-emb':>11} {'train atoms':>12} "
        f"{'steps':>7} {'FLOPs (est.)':>12}  done"
    ]
    for r in runs:
        lines.append(
            f"{r.index:>3}  {r.config.name:<24} {r.parameters:>11,} "
            f"{r.non_embedding_parameters:>11,} {r.train_atoms:>12,} "
            f"{r.config.train.steps:>7,} {r.training_flops:>12.2e}  "
            f"{'✓' if r.config_hash in done else ''}"
        )
    left = [r for r in runs if r.config_hash not in done]
    rates = [
        (float(row["non_embedding_parameters"]), row["training_flops"] / row["train_seconds"])
        for row in finished
        if row.get("training_flops") and row.get("train_seconds")
        and row.get("non_embedding_parameters")
    ]  # fmt: skip
    if not left:
        return "\n".join(lines)
    flops = sum(r.training_flops for r in left)
    what = f"{len(left)} run{'s' if len(left) > 1 else ''} to train, {flops:.2e} matmul FLOPs"
    if not rates:
        lines.append(
            f"{what}; the time they need follows from the rate of the first to finish (plan "
            "again then)"
        )
        return "\n".join(lines)

    def rate(run: PlannedRun) -> float:  # the finished run nearest in size, on a log scale
        n = max(run.non_embedding_parameters, 1)
        return min(rates, key=lambda nr: abs(math.log(max(nr[0], 1) / n)))[1]

    seconds = sum(r.training_flops / rate(r) for r in left)
    low, high = min(r for _, r in rates), max(r for _, r in rates)
    lines.append(
        f"{what}: about {seconds / 3600:.2g} h "
        f"of training at the rates the finished runs trained at ({low / 1e9:.2g}–"
        f"{high / 1e9:.2g} GFLOP/s, the nearest in size for each; evaluation not included)"
    )
    return "\n".join(lines)


def to_yaml(sweep: SweepConfig) -> str:
    """The sweep as YAML text (saved beside its results)."""
    data: dict[str, Any] = to_dict(sweep)
    return yaml.safe_dump(data, sort_keys=False)
