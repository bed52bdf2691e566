"""``matscale bench``: run the reference suites on each subject, write JSON and plots, and
print a side-by-side table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from matscale.bench import eos, md, s22
from matscale.bench.subjects import Subject
from matscale.errors import DataError

SUITES = ("dcdft", "s22", "md")


def bench(
    subjects: list[Subject],
    *,
    suites: tuple[str, ...] = SUITES,
    elements: list[str] | None = None,
    out: Path | None = None,
    md_steps: int = 10_000,
) -> dict[str, Any]:
    """Every suite on every subject: ``{subject name: {suite: results}}``, saved as
    ``out/bench.json`` (and ``out/dcdft.png``, one panel per element) when ``out`` is given."""
    if out is not None:  # before the work, not after it: a bad folder loses nothing
        if out.exists() and not out.is_dir():
            raise DataError("is a file, not a folder: choose another --out", file=str(out))
        out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for s in subjects:
        results[s.name] = {}
        if "dcdft" in suites:
            results[s.name]["dcdft"] = eos.run(s, elements)
        if "s22" in suites:
            results[s.name]["s22"] = s22.run(s)
        if "md" in suites:
            results[s.name]["md"] = md.run(s, steps=md_steps)
    if out is not None:
        (out / "bench.json").write_text(json.dumps(results, indent=1))
        if "dcdft" in suites:
            plot_eos(results, out / "dcdft.png")
    return results


def table(results: dict[str, Any]) -> str:
    """The subjects side by side: medians of the Delta test, S22 errors, speed."""
    lines = [
        f"{'subject':<34}{'dcdft n':>8}{'|dV0| %':>9}{'|dB0| %':>9}{'Δ meV':>8}"
        f"{'atoms/s':>9}{'s22 n':>7}{'MAE meV':>9}{'atoms/s':>9}{'md n':>6}"
        f"{'|drift|':>9}{'atoms/s':>9}"
    ]
    for name, r in results.items():
        d, s, m = r.get("dcdft", {}), r.get("s22", {}), r.get("md", {})
        drifts = [
            abs(x["drift_meV_per_atom_per_ps"])
            for x in m.get("systems", {}).values()
            if "drift_meV_per_atom_per_ps" in x
        ]
        lines.append(
            f"{name[:33]:<34}{d.get('fitted', 0):>8}"
            f"{_f(d.get('median_abs_V0_error_percent')):>9}"
            f"{_f(d.get('median_abs_B0_error_percent')):>9}"
            f"{_f(d.get('median_delta_meV_per_atom')):>8}{_f(d.get('atoms_per_s'), 0):>9}"
            f"{s.get('scored', 0):>7}{_f(s.get('mae_meV')):>9}{_f(s.get('atoms_per_s'), 0):>9}"
            f"{len(drifts):>6}{_f(max(drifts) if drifts else None, 3):>9}"
            f"{_f(m.get('atoms_per_s'), 0):>9}"
        )
    for name, r in results.items():  # the names a column of counts cannot give
        d = r.get("dcdft", {})
        failed = [e for e, x in d.get("elements", {}).items() if x.get("fit_failed")]
        if failed or d.get("not_covered"):
            lines.append(
                f"{name}: dcdft fitted {d.get('fitted', 0)} of "
                f"{d.get('fitted', 0) + len(failed)} elements"
                + (f"; no minimum near the reference: {', '.join(failed)}" if failed else "")
                + (f"; not covered: {', '.join(d['not_covered'])}" if d.get("not_covered") else "")
            )
    return "\n".join(lines)


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:,.{digits}f}"


def plot_eos(results: dict[str, Any], path: Path) -> None:
    """One panel per element: each subject's energies (relative to its minimum, meV/atom) and
    Birch–Murnaghan fit against volume, beside WIEN2k's curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plots are optional (extra `plot`): the JSON has every number
        return
    from ase.data import atomic_numbers
    from ase.eos import birchmurnaghan
    from ase.units import GPa

    symbols = sorted(
        {e for r in results.values() for e in r.get("dcdft", {}).get("elements", {})},
        key=lambda e: atomic_numbers[e],  # periodic-table order
    )
    if not symbols:
        return
    cols = 9
    rows = -(-len(symbols) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 1.7 * rows), squeeze=False)
    for ax in axes.flat[len(symbols) :]:
        ax.axis("off")
    for ax, symbol in zip(axes.flat, symbols, strict=False):
        ref = None
        for k, (name, r) in enumerate(results.items()):
            row = r.get("dcdft", {}).get("elements", {}).get(symbol)
            if row is None or "failed" in row:
                continue
            ref = row["wien2k"]
            v = np.array(row["volumes_A3_per_atom"])
            e = np.array(row["energies_eV_per_atom"])
            ax.plot(v, 1000 * (e - e.min()), "o", ms=2.5, color=f"C{k}", label=name)
            if "V0_A3_per_atom" in row:
                grid = np.linspace(v.min(), v.max(), 60)
                fit = birchmurnaghan(
                    grid, 0.0, row["B0_GPa"] * GPa, row["B1"], row["V0_A3_per_atom"]
                )
                ax.plot(grid, 1000 * (fit - fit.min()), "-", lw=0.8, color=f"C{k}")
        if ref is not None:
            grid = np.linspace(0.94 * ref["V0_A3_per_atom"], 1.06 * ref["V0_A3_per_atom"], 60)
            e_ref = birchmurnaghan(grid, 0.0, ref["B0_GPa"] * GPa, ref["B1"], ref["V0_A3_per_atom"])
            ax.plot(grid, 1000 * e_ref, "k--", lw=0.8, label="WIEN2k")
        ax.set_title(symbol, fontsize=8, pad=2)
        ax.tick_params(labelsize=5)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=7)
    fig.supxlabel("volume (Å³/atom)", fontsize=8)
    fig.supylabel("E − E_min (meV/atom)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
