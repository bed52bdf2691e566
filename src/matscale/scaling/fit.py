"""Power-law fits of error against model size N and data size D, with uncertainty.

- :func:`fit_power_law`: ``L(x) = E + A·x^-α`` for one slice (L(N) at fixed D, or L(D) at
  fixed N).
- :func:`fit_joint`: ``L(N, D) = E + A·N^-α + B·D^-β`` over every run at once (the third
  approach of Hoffmann et al. 2022, "Chinchilla": Huber loss on log errors).
- :func:`compute_optimal` and :func:`compute_for_error`: with training compute ``C = κ·N·D``
  (κ measured from the runs), the N and D that minimise L at a budget C, and the C a target
  error needs.

Fits minimise residuals of ``log L`` (errors span decades; a relative misfit is what matters)
from several starting points, with N and D scaled by their geometric means for conditioning.
Uncertainty comes from a residual bootstrap: the fitted curve times resampled log residuals,
refitted; 95% intervals are the 2.5th and 97.5th percentiles. (With 4–5 points per slice,
resampling the points themselves would often leave too few distinct x to fit.)
Extrapolation is checked by fitting without the largest x (or N, or D) and predicting it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, least_squares


@dataclass
class PowerLaw:
    """``L(x) = E + A·x^-α`` fitted to ``n`` points (x in the slice's units, L in the
    metric's, e.g. meV/Å)."""

    E: float
    A: float
    alpha: float
    n: int
    r2_log: float
    """Coefficient of determination of log L."""
    rms_log: float
    """RMS of log residuals (0.05 ≈ 5% typical misfit)."""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    """95% bootstrap intervals of E, A, alpha."""
    extrapolation: dict[str, float] | None = None
    """Fit without the largest x, predict it: x, observed, predicted, relative error."""

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** -self.alpha


@dataclass
class JointFit:
    """``L(N, D) = E + A·N^-α + B·D^-β`` over all runs; ``kappa`` relates compute to size:
    ``C ≈ κ·N·D`` training FLOPs."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    n: int
    r2_log: float
    rms_log: float
    kappa: float
    """Median training FLOPs / (N·D) of the runs."""
    kappa_spread: tuple[float, float]
    """Smallest and largest FLOPs / (N·D) of a run: how well C ∝ N·D holds."""
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    extrapolation: dict[str, dict[str, float]] = field(default_factory=dict)
    """``"N"`` and ``"D"``: fit without the largest, predict those runs (median relative
    error and the worst)."""

    def __call__(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return self.E + self.A * n**-self.alpha + self.B * d**-self.beta


# ---------------------------------------------------------------------------------------------
# one slice


def _fit_1d(
    x: np.ndarray, y: np.ndarray, floor: bool, start: np.ndarray | None = None
) -> np.ndarray:
    """Best (E, log A, α) in scaled x (x / geometric mean), by least squares on log y, from
    a grid of starting points (or from ``start`` alone: a bootstrap draw near the fit)."""
    logy = np.log(y)

    def resid(p: np.ndarray) -> np.ndarray:
        e, la, a = p if floor else (0.0, *p)
        return np.log(e + np.exp(la) * x**-a) - logy

    lower = np.array([0.0, -50.0, 0.0] if floor else [-50.0, 0.0])
    upper = np.array([float(y.min()), 50.0, 10.0] if floor else [50.0, 10.0])
    if start is not None:
        starts = [start if floor else start[1:]]
    else:
        floors = (0.0, 0.5 * y.min(), 0.9 * y.min()) if floor else (0.0,)
        starts = []
        for e0, a0 in itertools.product(floors, (0.1, 0.5, 1.5)):
            la0 = math.log(max(float(np.exp(np.mean(logy))) - e0, 1e-12))
            starts.append(np.array([e0, la0, a0] if floor else [la0, a0]))
    best = None
    for p0 in starts:
        p0 = np.clip(p0, lower + 1e-12, upper - 1e-12)
        r = least_squares(resid, p0, bounds=(lower, upper))
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    return best.x if floor else np.concatenate([[0.0], best.x])


def fit_power_law(
    x: np.ndarray | list[float],
    y: np.ndarray | list[float],
    *,
    floor: bool = True,
    bootstrap: int = 500,
    seed: int = 0,
    extrapolate: bool = True,
) -> PowerLaw:
    """Fit ``y = E + A·x^-α`` (``floor=False``: E = 0) to points with x > 0, y > 0.

    Needs at least 4 distinct x with a floor (3 without); fewer raise ValueError.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fits need positive x and y")
    need = 4 if floor else 3
    if len(np.unique(x)) < need:
        raise ValueError(f"{len(np.unique(x))} distinct x: a fit needs at least {need}")
    ref = float(np.exp(np.mean(np.log(x))))
    xs = x / ref
    p = _fit_1d(xs, y, floor)
    e, la, a = p
    pred = e + math.exp(la) * xs**-a
    res = np.log(y) - np.log(pred)
    law = PowerLaw(
        E=float(e),
        A=float(math.exp(la) * ref**a),  # back to unscaled x: A·(x/ref)^-α = A·ref^α·x^-α
        alpha=float(a),
        n=len(x),
        r2_log=_r2(np.log(y), res),
        rms_log=float(np.sqrt(np.mean(res**2))),
    )
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            ys = pred * np.exp(rng.choice(res, size=len(res), replace=True))
            eb, lab, ab = _fit_1d(xs, ys, floor, start=p)
            draws.append((eb, math.exp(lab) * ref**ab, ab))
        d = np.array(draws)
        law.ci = {k: _interval(d[:, i]) for i, k in enumerate(("E", "A", "alpha"))}
    if extrapolate:
        top = x == x.max()
        if len(np.unique(x[~top])) >= need:
            held = fit_power_law(x[~top], y[~top], floor=floor, bootstrap=0, extrapolate=False)
            observed = float(np.exp(np.mean(np.log(y[top]))))
            predicted = float(held(x.max()))
            law.extrapolation = {
                "x": float(x.max()),
                "observed": observed,
                "predicted": predicted,
                "relative_error": predicted / observed - 1,
            }
    return law


# ---------------------------------------------------------------------------------------------
# joint L(N, D)


def _fit_2d(
    n: np.ndarray, d: np.ndarray, y: np.ndarray, huber: float, start: np.ndarray | None = None
) -> np.ndarray:
    """Best (E, log A, α, log B, β) in scaled N and D, from a grid of starting points (or from
    ``start`` alone)."""
    logy = np.log(y)

    def resid(p: np.ndarray) -> np.ndarray:
        e, la, a, lb, b = p
        return np.log(e + np.exp(la) * n**-a + np.exp(lb) * d**-b) - logy

    lower = np.array([0.0, -50.0, 0.0, -50.0, 0.0])
    upper = np.array([float(y.min()), 50.0, 10.0, 50.0, 10.0])
    mean = float(np.exp(np.mean(logy)))
    starts = [start] if start is not None else []
    for e0, a0, b0 in itertools.product((0.0, 0.5 * y.min()), (0.2, 0.8), (0.2, 0.8)):
        if start is None:
            part = math.log(max(mean - e0, 1e-12) / 2)
            starts.append(np.array([e0, part, a0, part, b0]))
    best = None
    for p0 in starts:
        p0 = np.clip(p0, lower + 1e-12, upper - 1e-12)
        r = least_squares(resid, p0, bounds=(lower, upper), loss="huber", f_scale=huber)
        if best is None or r.cost < best.cost:
            best = r
    assert best is not None
    return best.x


def fit_joint(
    n: np.ndarray | list[float],
    d: np.ndarray | list[float],
    y: np.ndarray | list[float],
    flops: np.ndarray | list[float],
    *,
    bootstrap: int = 300,
    seed: int = 0,
    huber: float = 1e-3,
    extrapolate: bool = True,
) -> JointFit:
    """Fit ``y = E + A·N^-α + B·D^-β`` to runs of sizes ``n`` (parameters), data ``d`` and
    errors ``y``; ``flops`` (training FLOPs of each run) give κ of ``C ≈ κ·N·D``.

    Huber loss on log residuals with ``huber`` as the transition (Hoffmann et al. use 1e-3):
    a single bad run pulls the fit less than with squares. Needs 3+ distinct N and D (two sizes
    leave a term's scale and exponent free to trade against each other and the floor) and more
    runs than the 5 parameters.
    """
    n, d, y, c = (np.asarray(v, dtype=float) for v in (n, d, y, flops))
    if len(np.unique(n)) < 3 or len(np.unique(d)) < 3 or len(y) < 6:
        raise ValueError("a joint fit needs 3+ model sizes, 3+ data sizes and 6+ runs")
    if np.any(n <= 0) or np.any(d <= 0) or np.any(y <= 0):
        raise ValueError("a joint fit needs positive N, D and errors")
    n_ref, d_ref = (float(np.exp(np.mean(np.log(v)))) for v in (n, d))
    ns, ds = n / n_ref, d / d_ref
    p = _fit_2d(ns, ds, y, huber)
    pred = _joint_pred(p, ns, ds)
    res = np.log(y) - np.log(pred)
    ratio = c / (n * d)
    fit = JointFit(
        **_unscale(p, n_ref, d_ref),  # type: ignore[arg-type]
        n=len(y),
        r2_log=_r2(np.log(y), res),
        rms_log=float(np.sqrt(np.mean(res**2))),
        kappa=float(np.median(ratio)),
        kappa_spread=(float(ratio.min()), float(ratio.max())),
    )
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(bootstrap):
            ys = pred * np.exp(rng.choice(res, size=len(res), replace=True))
            draws.append(_unscale(_fit_2d(ns, ds, ys, huber, start=p), n_ref, d_ref))
        fit.ci = {k: _interval(np.array([dr[k] for dr in draws])) for k in draws[0]}
    if extrapolate:
        for name, axis in (("N", n), ("D", d)):
            top = axis == axis.max()
            rest = ~top
            if len(np.unique(n[rest])) < 2 or len(np.unique(d[rest])) < 2 or rest.sum() < 6:
                continue
            held = fit_joint(n[rest], d[rest], y[rest], c[rest], bootstrap=0, extrapolate=False)
            rel = held(n[top], d[top]) / y[top] - 1
            fit.extrapolation[name] = {
                "held_out": float(axis.max()),
                "runs": int(top.sum()),
                "median_relative_error": float(np.median(rel)),
                "worst_relative_error": float(rel[np.argmax(np.abs(rel))]),
            }
    return fit


def _joint_pred(p: np.ndarray, ns: np.ndarray, ds: np.ndarray) -> np.ndarray:
    e, la, a, lb, b = p
    return e + np.exp(la) * ns**-a + np.exp(lb) * ds**-b


def _unscale(p: np.ndarray, n_ref: float, d_ref: float) -> dict[str, float]:
    e, la, a, lb, b = (float(v) for v in p)
    return {
        "E": e,
        "A": math.exp(la) * n_ref**a,
        "alpha": a,
        "B": math.exp(lb) * d_ref**b,
        "beta": b,
    }


# ---------------------------------------------------------------------------------------------
# compute-optimal allocation


def compute_optimal(fit: JointFit, flops: float) -> dict[str, float]:
    """The N and D that minimise the fitted error at ``flops`` training FLOPs (C = κ·N·D):
    ``N* = G·(C/κ)^(β/(α+β))`` with ``G = (αA / βB)^(1/(α+β))``, ``D* = C / (κ·N*)``."""
    a, b = fit.alpha, fit.beta
    if a <= 0 or b <= 0:
        raise ValueError("no compute-optimal frontier: a fitted exponent is zero")
    g = (a * fit.A / (b * fit.B)) ** (1 / (a + b))
    n = g * (flops / fit.kappa) ** (b / (a + b))
    d = flops / (fit.kappa * n)
    return {"flops": flops, "N": float(n), "D": float(d), "error": float(fit(n, d))}


def compute_for_error(fit: JointFit, target: float) -> dict[str, float] | None:
    """The least compute (and its N, D) that reaches ``target`` error on the frontier; None
    when the target lies at or below the fitted floor E (no amount of compute reaches it)."""
    if target <= fit.E * (1 + 1e-9):
        return None

    def gap(log_c: float) -> float:
        return math.log(compute_optimal(fit, math.exp(log_c))["error"]) - math.log(target)

    lo, hi = math.log(1e3), math.log(1e40)
    if gap(lo) < 0:
        return compute_optimal(fit, math.exp(lo))
    if gap(hi) > 0:
        return None
    return compute_optimal(fit, math.exp(brentq(gap, lo, hi, xtol=1e-10)))


# ---------------------------------------------------------------------------------------------


def _r2(logy: np.ndarray, res: np.ndarray) -> float:
    total = float(np.sum((logy - logy.mean()) ** 2))
    return 1 - float(np.sum(res**2)) / total if total > 0 else float("nan")


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
