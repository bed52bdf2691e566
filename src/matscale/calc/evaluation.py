"""``matscale eval``: score a model on labelled structures from any file, folder or store.

Errors are gathered per structure in one streaming pass (batched prediction), then reduced to
MAE and RMSE of energy per atom (meV/atom), force components (meV/Å) and stress components
(meV/Å³): over all structures, per source, per family (``source/family``) and, for forces,
per element. ``summary.json``, ``structures.csv`` (one row per structure), parity plots and
error histograms (PNG, with matplotlib) go to the output folder.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from matscale.calc.inference import MAX_ATOMS, head_for, predict
from matscale.calc.model_file import Potential
from matscale.data.structure import Structure
from matscale.errors import DataError

#: Targets and their units in the metric keys (errors are reported in meV-based units).
TARGETS = {"energy": "meV_per_atom", "forces": "meV_per_A", "stress": "meV_per_A3"}
#: Structures predicted per call of :func:`~matscale.calc.inference.predict` (bounds memory).
CHUNK = 2048


def read_inputs(
    paths: list[Path],
    *,
    source: str | None = None,
    format: str | None = None,
    reader_options: dict[str, str] | None = None,
) -> Iterator[Structure]:
    """Labelled structures from stores (folders with ``meta.json``), data files, and folders
    searched as ``matscale data pack`` searches them; ``source`` overrides record sources;
    ``format`` and ``reader_options`` go to every file's reader (``read_structures``)."""
    from dataclasses import replace

    from matscale.data.pack import collect_inputs
    from matscale.data.readers import read_structures
    from matscale.data.store import META, Store

    for path in paths:
        if (path / META).is_file():
            store = Store(path)
            for i in range(len(store)):
                s = store[i]
                yield replace(s, source=source) if source else s
            continue
        files, sources = collect_inputs([path])
        for f in files:
            for s in read_structures(f, source=sources[f], format=format, **(reader_options or {})):
                yield replace(s, source=source) if source else s


@dataclass
class Errors:
    """Signed errors (prediction − label) gathered per structure, with their groups."""

    energy: list[tuple[float, float, int]] = field(default_factory=list)
    """(label eV/atom, prediction eV/atom, structure row) per structure with an energy."""
    forces: list[np.ndarray] = field(default_factory=list)
    """Per structure with forces, [n, 7]: label (eV/Å, 3), prediction (eV/Å, 3), Z."""
    force_rows: list[np.ndarray] = field(default_factory=list)
    """Per structure with forces, [n]: its row (structure index)."""
    stress: list[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=list)
    """(label [6] eV/Å³, prediction [6] eV/Å³, row) per periodic structure with a stress."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One row per structure: index, key, source, family, head, atoms, errors."""


def evaluate_structures(
    potential: Potential,
    structures: Iterable[Structure],
    *,
    head: str | None = None,
    max_atoms: int = MAX_ATOMS,
    progress: bool = True,
    file: str | None = None,
) -> Errors:
    """Predict every structure (batched) and gather its errors against its labels; ``file``
    names where the structures came from in the error raised when there are none."""
    from matscale.progress import progress_bar

    errors = Errors()
    bar = progress_bar(desc="evaluating", unit=" structures", enabled=progress)
    iterator = iter(structures)
    try:
        while chunk := list(islice(iterator, CHUNK)):
            for s in chunk:
                _check_labels(s)
            results = predict(
                potential,
                chunk,
                head=head,
                stress=potential.conservative and any(s.stress is not None for s in chunk),
                max_atoms=max_atoms,
            )
            for s, r in zip(chunk, results, strict=True):
                _add(errors, potential, s, r, head)
            bar.update(len(chunk))
    finally:  # closed before an error is printed: not redrawn below it when collected
        bar.close()
    if not errors.rows:
        raise DataError("no structures to evaluate", file=file)
    return errors


#: A structure's row (structures.csv) holds its error for each target it is labelled with.
ROW_ERRORS = {
    "energy": "energy_error_meV_per_atom",
    "forces": "forces_mae_meV_per_A",
    "stress": "stress_mae_meV_per_A3",
}


def _check_labels(s: Structure) -> None:
    """Raise :class:`DataError` naming the record and field for a label of the wrong shape
    (forces [n, 3] eV/Å, stress [6] eV/Å³ Voigt) or not finite: one NaN would turn every mean
    error it enters into NaN."""
    shapes = {"energy": (), "forces": (s.n_atoms, 3), "stress": (6,)}
    for name, shape in shapes.items():
        value = getattr(s, name)
        if value is not None and np.shape(value) != shape:
            raise DataError(
                f"expected shape {shape}, got {np.shape(value)}", record=s.key, field=name
            )
        if value is not None and not np.all(np.isfinite(value)):
            raise DataError(
                "a label contains NaN or inf: errors cannot be measured against it",
                record=s.key,
                field=name,
            )


def _add(
    errors: Errors, potential: Potential, s: Structure, r: dict[str, Any], head: str | None
) -> None:
    row_index = len(errors.rows)
    n = s.n_atoms
    row: dict[str, Any] = {
        "index": row_index,
        "key": s.key,
        "source": s.source,
        "family": s.family,
        "head": potential.heads[head_for(potential, s, head)],
        "atoms": n,
        "labelled_by": s.labelled_by,  # a model's labels, not a reference calculation's
    }
    if s.energy is not None:
        errors.energy.append((s.energy / n, r["energy"] / n, row_index))
        row[ROW_ERRORS["energy"]] = 1000 * (r["energy"] - s.energy) / n
    if s.forces is not None:
        errors.forces.append(np.concatenate([s.forces, r["forces"], s.numbers[:, None]], axis=1))
        errors.force_rows.append(np.full(n, row_index))
        row[ROW_ERRORS["forces"]] = 1000 * float(np.mean(np.abs(r["forces"] - s.forces)))
    if s.stress is not None and "stress" in r:
        errors.stress.append((np.asarray(s.stress), r["stress"], row_index))
        row[ROW_ERRORS["stress"]] = 1000 * float(np.mean(np.abs(r["stress"] - s.stress)))
    errors.rows.append(row)


def summarise(errors: Errors) -> dict[str, Any]:
    """MAE and RMSE (and counts) per target over all structures, per source, per family and,
    for forces, per element; keys ``<group>/<target>_{mae,rmse}_<unit>``."""
    sources = np.array([r["source"] for r in errors.rows])
    families = np.array([f"{r['source']}/{r['family'] or '-'}" for r in errors.rows])
    metrics: dict[str, Any] = {"structures": len(errors.rows)}
    groups = {"all": None, **{f"source:{s}": s for s in sorted(set(sources))}}
    groups.update({f"family:{f}": f for f in sorted(set(families))})

    def add(name: str, target: str, diff: np.ndarray, count: int) -> None:
        if diff.size == 0:
            return
        unit = TARGETS[target]
        prefix = "" if name == "all" else f"{name}/"
        metrics[f"{prefix}{target}_mae_{unit}"] = 1000 * float(np.mean(np.abs(diff)))
        metrics[f"{prefix}{target}_rmse_{unit}"] = 1000 * float(np.sqrt(np.mean(diff**2)))
        metrics[f"{prefix}{target}_count"] = count

    energy = np.array(errors.energy).reshape(-1, 3)
    forces = np.concatenate(errors.forces) if errors.forces else np.zeros((0, 7))
    force_rows = np.concatenate(errors.force_rows) if errors.force_rows else np.zeros(0, int)
    stress_rows = np.array([r for _, _, r in errors.stress], dtype=int)
    stress_diff = np.array([p - t for t, p, _ in errors.stress]).reshape(-1, 6)
    for name, value in groups.items():
        labels = sources if name.startswith("source:") else families
        keep = np.ones(len(errors.rows), bool) if value is None else labels == value
        e = energy[keep[energy[:, 2].astype(int)]] if len(energy) else energy
        add(name, "energy", e[:, 1] - e[:, 0], len(e))
        f = forces[keep[force_rows]]
        add(name, "forces", f[:, 3:6] - f[:, 0:3], len(f))
        st = stress_diff[keep[stress_rows]] if len(stress_rows) else stress_diff
        add(name, "stress", st, len(st))
    for z in np.unique(forces[:, 6]).astype(int):
        f = forces[forces[:, 6] == z]
        add(f"element:{chemical_symbols[z]}", "forces", f[:, 3:6] - f[:, 0:3], len(f))
    return metrics


def write_report(
    errors: Errors, metrics: dict[str, Any], out: Path, info: dict[str, Any]
) -> list[Path]:
    """``summary.json``, ``structures.csv`` and (with matplotlib) ``parity.png`` and
    ``errors.png`` in ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "summary.json", out / "structures.csv"]
    (out / "summary.json").write_text(json.dumps({**info, "metrics": metrics}, indent=2) + "\n")
    columns = list(dict.fromkeys(k for r in errors.rows for k in r))
    with open(out / "structures.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(errors.rows)
    try:
        written += _plots(errors, out)
    except ImportError:
        pass  # matplotlib is the optional 'plot' extra: the numbers are all in summary.json
    return written


def _plots(errors: Errors, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if errors.energy:
        e = np.array(errors.energy)
        panels.append(("energy", "eV/atom", e[:, 0], e[:, 1]))
    if errors.forces:
        f = np.concatenate(errors.forces)
        panels.append(("forces", "eV/Å", f[:, 0:3].ravel(), f[:, 3:6].ravel()))
    if errors.stress:
        panels.append(
            (
                "stress",
                "eV/Å³",
                np.concatenate([t for t, _, _ in errors.stress]),
                np.concatenate([p for _, p, _ in errors.stress]),
            )
        )
    paths: list[Path] = []
    if not panels:
        return paths
    for kind in ("parity", "errors"):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
        for ax, (name, unit, label, pred) in zip(axes[0], panels, strict=True):
            if kind == "parity":
                lo, hi = float(min(label.min(), pred.min())), float(max(label.max(), pred.max()))
                ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
                ax.scatter(label, pred, s=3, alpha=0.4, rasterized=True)
                ax.set(xlabel=f"label {name} ({unit})", ylabel=f"predicted ({unit})")
            else:
                diff = pred - label
                ax.hist(diff, bins=80, log=True)
                ax.set(xlabel=f"{name} error, predicted − label ({unit})", ylabel="count")
            mae = float(np.mean(np.abs(pred - label)))
            ax.set_title(f"{name}: MAE {mae:.4g} {unit}")
        fig.tight_layout()
        path = out / f"{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def evaluate_files(
    potential: Potential,
    paths: list[Path],
    out: Path | None,
    *,
    head: str | None = None,
    max_atoms: int = MAX_ATOMS,
    progress: bool = True,
    format: str | None = None,
    reader_options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole ``matscale eval``: read (``format`` and ``reader_options`` as
    :func:`read_inputs` takes them), predict, score, and write the report to ``out``."""
    started = time.perf_counter()
    errors = evaluate_structures(
        potential,
        read_inputs(paths, format=format, reader_options=reader_options),
        head=head,
        max_atoms=max_atoms,
        progress=progress,
        file=", ".join(map(str, paths)),
    )
    metrics = summarise(errors)
    if not any(f"{t}_count" in metrics for t in TARGETS):
        raise DataError(
            f"none of the {metrics['structures']} structures carries an energy, forces or a "
            "stress: nothing to score (eval compares predictions with labels; labels under "
            "other keys are read with --reader-option energy_key=REF_energy, forces_key=..., "
            "stress_key=...)",
            file=", ".join(map(str, paths)),
        )
    used: dict[str, int] = {}  # structures read by each head
    made: dict[str, int] = {}  # structures whose labels a model made, by that model
    defaulted: dict[str, int] = {}  # structures whose source names no head, by source
    for row in errors.rows:
        used[row["head"]] = used.get(row["head"], 0) + 1
        if row["labelled_by"]:
            made[row["labelled_by"]] = made.get(row["labelled_by"], 0) + 1
        if head is None and len(potential.heads) > 1 and row["source"] not in potential.heads:
            defaulted[row["source"]] = defaulted.get(row["source"], 0) + 1
    metrics["heads_used"] = dict(sorted(used.items()))
    if defaulted:  # the default head read them: a level of theory the user did not choose
        metrics["sources_without_a_head"] = dict(sorted(defaulted.items()))
    if made:  # the errors then measure agreement with that model, which the report says
        metrics["labels_made_by_models"] = dict(sorted(made.items()))
    unscored = sum(not any(k in row for k in ROW_ERRORS.values()) for row in errors.rows)
    if unscored:  # predicted, but in no error: the counts n of the table leave them out
        metrics["unscored_structures"] = unscored
    info = {
        "model": potential.info.get("path"),
        # None: each structure was read by its own source's head (metrics' heads_used counts)
        "head": head,
        "inputs": [str(p) for p in paths],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if out is not None:
        write_report(errors, metrics, out, info)
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """The MAE / RMSE table that ``matscale eval`` prints: one row per group (all, sources,
    families, elements); n counts structures (atoms for element rows)."""
    kinds = ("source", "family", "element")
    # keys are "<group>/<metric>"; a family group holds a "/" itself (family:source/family)
    named = {k.rsplit("/", 1)[0] for k in metrics if "/" in k}
    groups = ["all", *sorted(named, key=lambda g: (kinds.index(g.split(":")[0]), g))]
    keys = [
        "energy_mae_meV_per_atom",
        "energy_rmse_meV_per_atom",
        "forces_mae_meV_per_A",
        "forces_rmse_meV_per_A",
        "stress_mae_meV_per_A3",
        "stress_rmse_meV_per_A3",
    ]
    titles = ("E MAE", "E RMSE", "F MAE", "F RMSE", "σ MAE", "σ RMSE")
    lines = [
        f"{'group':<34} {'n':>7} " + " ".join(f"{t:>8}" for t in titles),
        f"{'':<34} {'':>7} {'meV/atom':>17} {'meV/Å':>17} {'meV/Å³':>17}",
    ]
    for g in groups:
        prefix = "" if g == "all" else f"{g}/"
        n = metrics.get(prefix + "energy_count", metrics.get(prefix + "forces_count", 0))
        cells = [metrics.get(prefix + k) for k in keys]
        text = " ".join(f"{v:8.1f}" if v is not None else f"{'—':>8}" for v in cells)
        lines.append(f"{g:<34} {n:>7} {text}")
    lines.append("n: structures (atoms on element rows); MAE and RMSE of force components")
    return "\n".join(lines)
