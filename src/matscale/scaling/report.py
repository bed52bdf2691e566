"""``matscale report``: a sweep's results table → fits, figures and a Markdown report.

Writes into one folder: ``report.md`` (tables of runs and fits, the compute-optimal frontier,
what it takes to reach error targets, and plain statements where a power law does not fit),
``fits.json`` (every fitted number), ``results.csv`` and the figures of :mod:`plot`.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matscale.scaling.analysis import Analysis, analyse
from matscale.scaling.fit import JointFit, PowerLaw
from matscale.scaling.plot import label, plot_all, slug
from matscale.scaling.results import RESULTS, read_results

#: What the report fits by default: test-split errors of the final weights.
DEFAULT_METRICS = ("test/energy_mae_meV_per_atom", "test/forces_mae_meV_per_A")

#: Below this R² of log error, or beyond this extrapolation error, a fit is called poor.
POOR_R2 = 0.9
POOR_EXTRAPOLATION = 0.2


def write_report(
    sweep_dir: Path,
    out: Path,
    *,
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    which: str = "final",
    bootstrap: int = 300,
    command: str = "",
    figures: bool = True,
) -> Path:
    """Analyse ``sweep_dir``'s results and write the report into ``out``; returns its path."""
    rows = read_results(sweep_dir / RESULTS)
    if not rows:
        raise ValueError(f"{sweep_dir / RESULTS}: no finished runs to report on")
    out.mkdir(parents=True, exist_ok=True)
    analyses = [analyse(rows, m, which=which, bootstrap=bootstrap) for m in metrics]
    write_csv(rows, out / "results.csv", metrics)
    (out / "fits.json").write_text(json.dumps([as_json(a) for a in analyses], indent=1) + "\n")
    lines = [f"# Scaling study: {rows[0]['sweep']}", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    lines += _runs_table(rows, metrics)
    for a in analyses:
        if figures:
            plot_all(a, rows, out)
        lines += _section(a, figures)
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...]) -> None:
    """The results table as CSV: sizes, what was seen, compute, and the chosen errors."""
    cols = [
        "run", "width", "depth", "parameters", "non_embedding_parameters", "fraction", "seed",
        "train_structures", "train_atoms", "steps", "atoms_seen", "edges_seen",
        "training_flops", "train_seconds", "config_hash",
    ]  # fmt: skip
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*cols, *metrics])
        for r in rows:
            w.writerow([r[c] for c in cols] + [r["final"].get(m, "") for m in metrics])


def as_json(a: Analysis) -> dict[str, Any]:
    """One analysis as JSON-safe data."""

    def fit(v: Any) -> Any:
        return asdict(v) if isinstance(v, PowerLaw | JointFit) else v

    return {
        "metric": a.metric,
        "which": a.which,
        "points": [dict(zip(("N", "D", "error", "flops"), p, strict=True)) for p in a.points],
        "L_of_N_at_D": {f"{k:g}": fit(v) for k, v in a.by_d.items()},
        "L_of_D_at_N": {f"{k:g}": fit(v) for k, v in a.by_n.items()},
        "joint": fit(a.joint),
        "frontier": a.frontier,
        "targets": a.targets,
        "frontier_withheld": a.withheld,
    }


def companions(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> tuple[str, ...]:
    """``metrics`` and, after each, the same error on the validation set and on the held-out
    families where the runs have them: a test error is never shown alone (a random split
    flatters; held-out families say how a model extrapolates)."""
    out: list[str] = []
    for m in metrics:
        base = m.split("/", 1)[1] if m.startswith(("test/", "holdout/")) else m
        for key in (m, base, f"holdout/{base}"):
            if key not in out and any(key in r["final"] for r in rows):
                out.append(key)
    return tuple(out)


def _runs_table(rows: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[str]:
    metrics = companions(rows, metrics)
    head = "| run | N (non-emb.) | D (atoms) | steps | seconds | train FLOPs | "
    head += " | ".join(label(m) if "/" in m else f"val {label(m)}" for m in metrics) + " |"
    lines = ["## Runs", "", head, "|---" * (6 + len(metrics)) + "|"]
    for r in sorted(
        rows, key=lambda r: (r["non_embedding_parameters"], r["train_atoms"], r["seed"])
    ):
        errs = " | ".join(_num(r["final"].get(m)) for m in metrics)
        lines.append(
            f"| {r['run']} | {r['non_embedding_parameters']:,} | {r['train_atoms']:,} "
            f"| {r['steps']:,} | {r['train_seconds']:.0f} | {r['training_flops']:.2e} | {errs} |"
        )
    return [*lines, ""]


def _section(a: Analysis, figures: bool) -> list[str]:
    name = label(a.metric)
    lines = [f"## {name}", ""]
    if figures:
        s = slug(a.metric)
        lines += [f"![{name} against N]({s}_vs_N.png) ![{name} against D]({s}_vs_D.png)", ""]
    lines += ["### Joint fit L(N, D) = E + A·N^-α + B·D^-β", ""]
    j = a.joint
    if isinstance(j, JointFit):
        ci = j.ci
        lines += [
            "| parameter | value | 95% interval |",
            "|---|---:|---|",
            *(
                f"| {k} | {_num(getattr(j, k))} | {_ci(ci.get(k))} |"
                for k in ("E", "A", "alpha", "B", "beta")
            ),
            "",
            f"{j.n} runs; R² of log error {j.r2_log:.3f}; RMS log residual {j.rms_log:.3f} "
            f"(≈ {100 * j.rms_log:.0f}% typical misfit). Training compute C ≈ κ·N·D with "
            f"κ = {j.kappa:.3g} FLOPs (runs range {j.kappa_spread[0]:.3g}–"
            f"{j.kappa_spread[1]:.3g}).",
            "",
        ]
        for axis, e in j.extrapolation.items():
            lines.append(
                f"- Extrapolation in {axis}: fitted without the largest {axis} "
                f"({e['held_out']:,.0f}), its {e['runs']} run(s) are predicted with median "
                f"error {100 * e['median_relative_error']:+.0f}% (worst "
                f"{100 * e['worst_relative_error']:+.0f}%)."
            )
        if a.withheld:
            lines += ["", f"No compute-optimal frontier or targets: {a.withheld}.", ""]
        else:
            if figures:
                lines += ["", f"![frontier]({slug(a.metric)}_frontier.png)", ""]
            lines += _frontier_tables(a)
    else:
        lines += [f"No joint fit: {j}.", ""]
    for title, slices, var, other in (
        ("L(N) at each data size D", a.by_d, "α", "D (atoms)"),
        ("L(D) at each model size N", a.by_n, "β", "N"),
    ):
        lines += [
            f"### {title}: E + A·x^-{var}",
            "",
            f"| {other} | {var} | 95% interval | E | R² (log) | extrapolation to largest x |",
            "|---:|---:|---|---:|---:|---:|",
        ]
        for key, fit in slices.items():
            if isinstance(fit, PowerLaw):
                ext = fit.extrapolation
                miss = "—" if ext is None else f"{100 * ext['relative_error']:+.0f}%"
                lines.append(
                    f"| {key:,.0f} | {fit.alpha:.3f} | {_ci(fit.ci.get('alpha'))} | "
                    f"{_num(fit.E)} | {fit.r2_log:.3f} | {miss} |"
                )
            else:
                lines.append(f"| {key:,.0f} | — | no fit: {fit} | | | |")
        lines += [
            "",
            "Extrapolation: the slice fitted without its largest x predicts that point (error "
            "of the prediction); — where fewer than 4 sizes would be left to fit.",
            "",
        ]
    lines += _verdicts(a)
    return lines


def _frontier_tables(a: Analysis) -> list[str]:
    lines = [
        "Compute-optimal allocation (for the sweep's training recipe and budget rule):",
        "",
        f"| training FLOPs C | N* | D* (atoms) | fitted {label(a.metric)} |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f['flops']:.2e} | {f['N']:,.0f} | {f['D']:,.0f} | {_num(f['error'])} |"
        for f in a.frontier[::2]
    ]
    lines += [
        "",
        f"To reach a {label(a.metric)} of X (targets: the best run's error × 1, 0.8, 0.6, "
        "0.5, 0.4):",
        "",
        "| X | C (FLOPs) | N | D (atoms) |",
        "|---:|---:|---:|---:|",
    ]
    for t in a.targets:
        if t["flops"] is None:
            lines.append(f"| {_num(t['error'])} | unreachable: below the fitted floor E | | |")
        else:
            lines.append(
                f"| {_num(t['error'])} | {t['flops']:.2e} | {t['N']:,.0f} | {t['D']:,.0f} |"
            )
    return [*lines, ""]


def _verdicts(a: Analysis) -> list[str]:
    """Plain statements of where a power law does not describe the data."""
    notes = []
    fits: list[tuple[str, Any]] = [("joint fit", a.joint)]
    fits += [(f"L(N) at D = {k:,.0f}", v) for k, v in a.by_d.items()]
    fits += [(f"L(D) at N = {k:,.0f}", v) for k, v in a.by_n.items()]
    for name, fit in fits:
        if isinstance(fit, str):
            notes.append(f"- {name}: not fitted ({fit}).")
            continue
        if fit.r2_log < POOR_R2:
            notes.append(f"- {name}: poor fit (R² of log error {fit.r2_log:.2f}).")
        exps = ("alpha", "beta") if isinstance(fit, JointFit) else ("alpha",)
        for e in exps:
            lo = fit.ci.get(e, (1.0, 1.0))[0]
            if getattr(fit, e) < 0.01 or lo < 0.01:
                notes.append(
                    f"- {name}: the exponent {e} is indistinguishable from 0 (no improvement "
                    "with size along this axis at these sizes)."
                )
        ext = fit.extrapolation if isinstance(fit, PowerLaw) else None
        if ext and abs(ext["relative_error"]) > POOR_EXTRAPOLATION:
            notes.append(
                f"- {name}: extrapolation to the largest size misses by "
                f"{100 * ext['relative_error']:+.0f}%."
            )
    if isinstance(a.joint, JointFit):
        for axis, miss in a.joint.extrapolation.items():
            if abs(miss["median_relative_error"]) > POOR_EXTRAPOLATION:
                notes.append(
                    f"- joint fit: extrapolation in {axis} misses by "
                    f"{100 * miss['median_relative_error']:+.0f}% (median)."
                )
    head = ["### Where a power law does not fit", ""]
    return head + (notes or ["- Every fit above has R² ≥ 0.9 and extrapolates within 20%."]) + [""]


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"


def _ci(ci: tuple[float, float] | list[float] | None) -> str:
    return "—" if not ci else f"{_num(ci[0])} – {_num(ci[1])}"
