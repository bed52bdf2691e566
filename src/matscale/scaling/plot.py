"""Figures of a scaling analysis, each written as PNG and SVG (needs matplotlib: the ``plot``
extra).

- ``<metric>_vs_N``: error against non-embedding parameters, one line per data size, with
  each slice's fitted power law dashed;
- ``<metric>_vs_D``: error against training atoms, one line per model size;
- ``<metric>_frontier``: iso-error contours of the joint fit over (N, D), the runs, lines of
  equal training compute, and the compute-optimal frontier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from matscale.scaling.analysis import Analysis, seed_means
from matscale.scaling.fit import JointFit, PowerLaw

UNITS = {"meV_per_atom": "meV/atom", "meV_per_A": "meV/Å", "meV_per_A3": "meV/Å³"}


def label(metric_key: str) -> str:
    """``test/forces_mae_meV_per_A`` → ``test force MAE (meV/Å)``."""
    *prefix, name = metric_key.split("/")
    target, _, unit = name.partition("_mae_")
    noun = {"forces": "force", "energy": "energy", "stress": "stress"}.get(target, target)
    return " ".join([*prefix, f"{noun} MAE ({UNITS.get(unit, unit)})"])


def slug(metric_key: str) -> str:
    """A file-name stem for a metric key."""
    return metric_key.replace("/", "_").replace("_mae_", "_")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError(
            "plots need matplotlib: pip install -c constraints.txt -e '.[plot]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.tight_layout()
    for p in paths:
        # no timestamps in the SVG: a rerun on the same results gives the same file
        fig.savefig(p, dpi=150, metadata={"Date": None} if p.suffix == ".svg" else None)
    _pyplot().close(fig)
    return paths


def plot_slices(
    analysis: Analysis, rows: list[dict[str, Any]], out: Path, *, along: str
) -> list[Path]:
    """Error against N (``along="N"``, one line per D) or against D (one line per N)."""
    plt = _pyplot()
    means = seed_means(rows, analysis.metric, analysis.which)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    keys = sorted({nd[1] if along == "N" else nd[0] for nd in means})
    fits = analysis.by_d if along == "N" else analysis.by_n
    colours = plt.cm.viridis(np.linspace(0.05, 0.9, max(len(keys), 1)))
    for colour, key in zip(colours, keys, strict=True):
        pts = sorted(
            (nd[0] if along == "N" else nd[1], v)
            for nd, v in means.items()
            if (nd[1] if along == "N" else nd[0]) == key
        )
        x = np.array([p[0] for p in pts])
        y = np.array([p[1][0] for p in pts])
        err = np.array([[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]])
        name = f"D = {key:,.0f} atoms" if along == "N" else f"N = {key:,.0f}"
        fit = fits.get(key)
        if isinstance(fit, PowerLaw):
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, fit(grid), "--", color=colour, lw=1)
            name += f" (α = {fit.alpha:.2f})" if along == "N" else f" (β = {fit.alpha:.2f})"
        ax.errorbar(x, y, yerr=err, fmt="o-", color=colour, ms=4, lw=1.2, capsize=2, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters N" if along == "N" else "training data D (atoms)")
    ax.set_ylabel(label(analysis.metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, title="dashed: E + A·x^-exponent fit per line", title_fontsize=7)
    ax.set_title(f"{label(analysis.metric)} against {'model' if along == 'N' else 'data'} size")
    return _save(fig, out, f"{slug(analysis.metric)}_vs_{along}")


def plot_frontier(analysis: Analysis, out: Path) -> list[Path]:
    """Iso-error contours of the joint fit, the runs, iso-compute lines and the frontier."""
    if not isinstance(analysis.joint, JointFit) or not analysis.frontier:
        return []  # no joint fit, or its exponents cannot place a frontier (analysis.withheld)
    plt = _pyplot()
    fit = analysis.joint
    n, d, _, c = (np.array(v) for v in zip(*analysis.points, strict=True))
    frontier = analysis.frontier
    n_lo = min(n.min(), min(f["N"] for f in frontier)) / 2
    n_hi = max(n.max(), max(f["N"] for f in frontier)) * 2
    d_lo = min(d.min(), min(f["D"] for f in frontier)) / 2
    d_hi = max(d.max(), max(f["D"] for f in frontier)) * 2
    gn, gd = np.meshgrid(np.geomspace(n_lo, n_hi, 200), np.geomspace(d_lo, d_hi, 200))
    loss = fit(gn, gd)
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    levels = np.geomspace(loss.min() * 1.001, loss.max(), 12)
    cs = ax.contour(gn, gd, loss, levels=levels, cmap="viridis", linewidths=0.9)
    ax.clabel(cs, fmt=lambda v: f"{v:.3g}", fontsize=7)
    for budget in np.geomspace(c.min(), c.max() * 1000, 5):
        ax.plot(gn[0], budget / (fit.kappa * gn[0]), ":", color="grey", lw=0.8)
    ax.plot(
        [f["N"] for f in frontier], [f["D"] for f in frontier], "r-", lw=2,
        label="compute-optimal N*(C), D*(C)",
    )  # fmt: skip
    ax.scatter(n, d, c="k", s=14, zorder=3, label="runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(n_lo, n_hi)
    ax.set_ylim(d_lo, d_hi)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("training data D (atoms)")
    ax.set_title(f"{label(analysis.metric)}: fitted contours (dotted: equal FLOPs)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out, f"{slug(analysis.metric)}_frontier")


def plot_all(analysis: Analysis, rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The three figures of one analysis."""
    return [
        *plot_slices(analysis, rows, out, along="N"),
        *plot_slices(analysis, rows, out, along="D"),
        *plot_frontier(analysis, out),
    ]
