"""The results table of a sweep: one JSON row per finished run in ``results.jsonl``.

A row holds what the fits and plots need (parameters, data size, what was seen, training
FLOPs, errors) and what makes it reproducible (the resolved config and its hash). Rows are
appended under a file lock, so SLURM array tasks finishing together cannot interleave.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from matscale.config import ConfigError, RunConfig, from_dict, to_dict
from matscale.errors import DataError
from matscale.models.size import training_flops
from matscale.scaling.sweep import PlannedRun, config_hash

RESULTS = "results.jsonl"

#: The row's model size N (non-embedding parameters) and data size D (training atoms).
N_KEY = "non_embedding_parameters"
D_KEY = "train_atoms"
#: What every row needs for the fits: the run, its sizes, its compute and its errors.
SIZES = (N_KEY, D_KEY, "training_flops")

#: The error columns a fit can use: ``final``/``best`` metric keys of a row.
ENERGY = "energy_mae_meV_per_atom"
FORCES = "forces_mae_meV_per_A"


def finished_hashes(path: Path) -> set[str]:
    """The config hashes of the runs listed in results file ``path`` (:func:`run_hash`)."""
    return {run_hash(row) for row in read_rows(path)}


def run_hash(row: dict[str, Any]) -> str:
    """The config hash of a row's run, recomputed from its saved config with today's
    defaults and hash, so that rows written before a config key was added (or before the hash
    changed) still name their run. A row whose config no longer reads (a key was removed)
    keeps the hash it was written with."""
    try:
        return config_hash(from_dict(RunConfig, row["config"]))
    except (KeyError, ConfigError):
        return str(row["config_hash"])


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file (``[]`` if it does not exist). A line that is not JSON (a row
    cut by a crash mid-write) is an error naming the file and line, not skipped silently."""
    if not path.exists():
        return []
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"not a JSON row ({exc.msg}): a row cut by a crash while it was written? "
                "Remove that line: `matscale sweep run` writes the rows of finished runs again "
                "from their folders",
                file=str(path),
                record=f"line {k}",
            ) from None
    return rows


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a sweep's results file, each checked for what the fits need: a run name,
    positive sizes and FLOPs, error tables; and no run listed twice (counted twice, it would
    weigh double in every fit). A row at fault is a :class:`DataError` naming the row and
    field."""
    rows = read_rows(path)
    seen: dict[str, int] = {}
    for k, row in enumerate(rows, 1):
        where: dict[str, Any] = {"file": str(path), "record": k}
        if not isinstance(row, dict):
            raise DataError("not a JSON object", **where)
        for key in ("run", "config_hash", *SIZES, "final"):
            if key not in row:
                raise DataError("missing (not a row `matscale sweep` wrote?)", field=key, **where)
        for key in SIZES:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise DataError(f"expected a positive number, got {value!r}", field=key, **where)
        if not isinstance(row["final"], dict):
            raise DataError("expected a table of errors", field="final", **where)
        for table in ("final", "best"):
            for key, value in (row.get(table) or {}).items():  # the fits take logs of them
                if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                    raise DataError(f"expected an error ≥ 0, got {value!r}",
                                    field=f"{table}.{key}", **where)  # fmt: skip
        first = seen.setdefault(run_hash(row), k)
        if first != k:
            raise DataError(
                f"the run {row['run']} again (record {first}): remove one of the two",
                field="config_hash",
                **where,
            )
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the results file under an exclusive lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(json.dumps(row) + "\n")
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_row(
    planned: PlannedRun, final: dict[str, float], sweep: str, *, processes: int = 1
) -> dict[str, Any]:
    """The results row of a finished run, from its final metrics and its ``metrics.jsonl``
    (what was seen, validation history, training seconds)."""
    log = read_rows(planned.config.run_dir / "metrics.jsonl")
    train = [r for r in log if r.get("kind") == "train"]
    val = [r for r in log if r.get("kind") == "val"]
    # counts are logged per process: every process sees a batch of about the same size
    seen = {
        k: processes * sum(int(r.get(k, 0)) for r in train)
        for k in ("structures", "atoms", "edges")
    }
    best: dict[str, float] = {}
    for r in val:
        for k, v in r.items():
            if k.endswith(("_meV_per_atom", "_meV_per_A", "_meV_per_A3")):
                best[k] = min(best.get(k, float("inf")), float(v))
    return {
        "sweep": sweep,
        "run": planned.config.name,
        "config_hash": planned.config_hash,
        "index": planned.index,
        "width": planned.model.width,
        "depth": planned.model.depth,
        "parameters": planned.parameters,
        "non_embedding_parameters": planned.non_embedding_parameters,
        "fraction": planned.fraction,
        "seed": planned.seed,
        "train_structures": planned.train_structures,
        "train_atoms": planned.train_atoms,
        "steps": planned.config.train.steps,
        "structures_seen": seen["structures"],
        "atoms_seen": seen["atoms"],
        "edges_seen": seen["edges"],
        "training_flops": training_flops(planned.model, seen["atoms"], seen["edges"]),
        "train_seconds": _train_seconds(train),
        "final": final,
        "best": best,
        "config": to_dict(planned.config),
    }


def _train_seconds(train: list[dict[str, Any]]) -> float:
    """Seconds of training logged, summed over segments (a resumed run's clock restarts; the
    work lost between its last checkpoint and the crash is not counted)."""
    total, last = 0.0, 0.0
    for r in train:
        s = float(r.get("seconds", 0.0))
        if s < last:
            total += last
        last = s
    return total + last


def metric(row: dict[str, Any], key: str, *, which: str = "final") -> float:
    """An error of a row: ``key`` like ``forces_mae_meV_per_A`` or
    ``emt-metals/forces_mae_meV_per_A`` (a source's), ``test/...`` for the test split."""
    table = row.get(which, {})
    if key not in table:
        why = ""
        if which == "best" and key.startswith("test/"):
            why = " (best holds the validation errors of its evaluation: drop test/)"
        raise KeyError(f"run {row['run']}: no {which} metric {key!r}{why}; has {sorted(table)}")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise DataError(
            f"run {row['run']}: expected an error ≥ 0, got {value!r}", field=f"{which}.{key}"
        )
    return float(value)
