"""From a results table to fitted scaling laws: slices L(N) per data size and L(D) per model
size, the joint L(N, D), the compute-optimal frontier and the compute each error target needs.

N is the non-embedding parameter count (Kaplan et al.; the element table is a lookup, not
compute), D the number of atoms in a run's training data, C its training FLOPs
(``models/size.py``: matmuls only).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from matscale.scaling.fit import (
    JointFit,
    PowerLaw,
    compute_for_error,
    compute_optimal,
    fit_joint,
    fit_power_law,
)
from matscale.scaling.results import D_KEY, N_KEY, metric


@dataclass
class Analysis:
    """Every fit of one error metric over one sweep's runs."""

    metric: str
    """Metric key in the rows, e.g. ``test/forces_mae_meV_per_A``."""
    which: str
    """``final`` (weights at the end) or ``best`` (best validation evaluation)."""
    points: list[tuple[float, float, float, float]]
    """(N, D, error, training FLOPs) per run."""
    by_d: dict[float, PowerLaw | str] = field(default_factory=dict)
    """L(N) at each D; a string says why that slice has no fit."""
    by_n: dict[float, PowerLaw | str] = field(default_factory=dict)
    """L(D) at each N."""
    joint: JointFit | str = "not fitted"
    frontier: list[dict[str, float]] = field(default_factory=list)
    """Compute-optimal N, D and error at FLOP budgets spanning the sweep's and beyond."""
    targets: list[dict[str, Any]] = field(default_factory=list)
    """For error targets: the least compute, with its N and D (None: below the floor)."""
    withheld: str = ""
    """Why there is no frontier or targets although the joint fit converged (an exponent
    indistinguishable from 0 sends N* or D* to 0 or to astronomic sizes)."""


def analyse(
    rows: list[dict[str, Any]],
    metric_key: str,
    *,
    which: str = "final",
    bootstrap: int = 300,
    targets: list[float] | None = None,
) -> Analysis:
    """Fit ``metric_key`` of ``rows`` every way the sweep allows; a fit that cannot be made
    (too few points, a failed solve) is recorded with its reason instead of stopping the rest."""
    points = [
        (
            float(r[N_KEY]),
            float(r[D_KEY]),
            metric(r, metric_key, which=which),
            float(r["training_flops"]),
        )
        for r in rows
    ]
    out = Analysis(metric=metric_key, which=which, points=points)
    if not points:
        return out
    n, d, y, c = (np.array(v) for v in zip(*points, strict=True))
    # L(N) at each D over the N axis; L(D) at each N over the D axis
    for fixed, x, slices in ((d, n, out.by_d), (n, d, out.by_n)):
        for key in sorted(set(fixed.tolist())):
            m = fixed == key
            slices[key] = _try(lambda m=m, x=x: fit_power_law(x[m], y[m], bootstrap=bootstrap))
    out.joint = _try(lambda: fit_joint(n, d, y, c, bootstrap=bootstrap))
    if isinstance(out.joint, JointFit):
        out.withheld = _unresolved_exponents(out.joint)
    if isinstance(out.joint, JointFit) and not out.withheld:
        lo, hi = float(c.min()), float(c.max())
        budgets = np.geomspace(lo / 10, hi * 1000, 13)
        out.frontier = [compute_optimal(out.joint, float(b)) for b in budgets]
        best = float(y.min())
        for t in targets or [best * f for f in (1.0, 0.8, 0.6, 0.5, 0.4)]:
            need = compute_for_error(out.joint, t)
            out.targets.append({"error": t, **(need or {"flops": None, "N": None, "D": None})})
    return out


#: The smallest exponent a frontier is drawn from, and the widest ratio of its 95 % interval's
#: ends: past either, the data do not tell how error falls with that size.
MIN_EXPONENT = 0.01
MAX_INTERVAL_RATIO = 10.0


def _unresolved_exponents(joint: JointFit) -> str:
    """Why the joint fit's exponents cannot place a compute-optimal frontier ("": they can)."""
    reasons = []
    for name, value in (("alpha", joint.alpha), ("beta", joint.beta)):
        lo, hi = joint.ci.get(name, (value, value))
        if value < MIN_EXPONENT or lo < MIN_EXPONENT:
            reasons.append(f"{name} = {value:.3g} is indistinguishable from 0")
        elif hi / lo > MAX_INTERVAL_RATIO:
            reasons.append(f"{name}'s 95 % interval {lo:.3g}–{hi:.3g} spans more than 10x")
    return "; ".join(reasons)


def _try(make: Any) -> Any:
    try:
        return make()
    except (ValueError, RuntimeError, FloatingPointError) as exc:
        return str(exc)


def seed_means(
    rows: list[dict[str, Any]], metric_key: str, which: str = "final"
) -> dict[tuple[float, float], tuple[float, float, float]]:
    """(N, D) → (mean, min, max) of the metric over seeds: what the plots draw."""
    groups: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in rows:
        groups[(float(r[N_KEY]), float(r[D_KEY]))].append(metric(r, metric_key, which=which))
    return {k: (float(np.mean(v)), min(v), max(v)) for k, v in sorted(groups.items())}
