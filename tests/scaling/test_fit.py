"""The fitter recovers known laws from noisy synthetic data, and says when there is none."""

import math

import numpy as np
import pytest

from matscale.scaling.fit import (
    compute_for_error,
    compute_optimal,
    fit_joint,
    fit_power_law,
)


def _noisy(y: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return y * np.exp(np.random.default_rng(seed).normal(0, sigma, y.shape))


def test_power_law_with_floor_is_recovered_with_an_interval_that_holds_it() -> None:
    x = np.geomspace(1e3, 1e6, 8)
    y = _noisy(5.0 + 300.0 * x**-0.35, 0.02)
    law = fit_power_law(x, y, bootstrap=200)
    assert law.alpha == pytest.approx(0.35, abs=0.06)
    assert law.E == pytest.approx(5.0, abs=1.5)
    assert law.ci["alpha"][0] < 0.35 < law.ci["alpha"][1]
    assert law.ci["alpha"][1] - law.ci["alpha"][0] < 0.3  # informative, not the whole range
    assert law.r2_log > 0.95 and law.rms_log < 0.05
    ext = law.extrapolation
    assert ext is not None and ext["x"] == 1e6 and abs(ext["relative_error"]) < 0.1


def test_pure_power_law_and_units_of_a() -> None:
    x = np.array([10.0, 30, 100, 300, 1000])
    y = _noisy(80.0 * x**-0.5, 0.01, seed=1)
    law = fit_power_law(x, y, floor=False, bootstrap=50)
    assert law.E == 0.0
    assert law.alpha == pytest.approx(0.5, abs=0.03)
    assert law.A == pytest.approx(80.0, rel=0.1)  # in unscaled x, not the internal scaled one
    assert law(100.0) == pytest.approx(8.0, rel=0.05)


def test_noise_without_a_trend_gives_an_exponent_interval_at_zero() -> None:
    x = np.geomspace(1e2, 1e5, 6)
    y = _noisy(np.full(6, 40.0), 0.05, seed=2)
    law = fit_power_law(x, y, bootstrap=100)
    assert law.ci["alpha"][0] < 0.01


def test_too_few_points_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        fit_power_law([1, 2, 3], [3, 2, 1])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1, 2, 3, 4], [3, 2, 0, 1])


def _grid(sigma: float = 0.02) -> tuple[np.ndarray, ...]:
    n, d = (v.ravel() for v in np.meshgrid(np.geomspace(1e3, 1e5, 5), np.geomspace(1e4, 1e5, 4)))
    y = _noisy(3.0 + 2000 * n**-0.5 + 9000 * d**-0.4, sigma, seed=3)
    return n, d, y, 6 * 30 * n * d  # C = κ·N·D with κ = 180


def test_joint_fit_recovers_exponents_floor_and_kappa() -> None:
    n, d, y, c = _grid()
    fit = fit_joint(n, d, y, c, bootstrap=100)
    assert fit.alpha == pytest.approx(0.5, abs=0.1)
    assert fit.beta == pytest.approx(0.4, abs=0.1)
    assert fit.kappa == pytest.approx(180.0) and fit.kappa_spread == pytest.approx((180, 180))
    for k, true in (("alpha", 0.5), ("beta", 0.4)):
        assert fit.ci[k][0] < true < fit.ci[k][1]
    assert fit.r2_log > 0.95
    assert set(fit.extrapolation) == {"N", "D"}
    assert all(abs(e["median_relative_error"]) < 0.1 for e in fit.extrapolation.values())


def test_compute_optimal_is_the_minimum_on_its_iso_flop_line() -> None:
    n, d, y, c = _grid(sigma=0.0)
    fit = fit_joint(n, d, y, c, bootstrap=0)
    for budget in (1e12, 1e15, 1e18):
        opt = compute_optimal(fit, budget)
        assert fit.kappa * opt["N"] * opt["D"] == pytest.approx(budget)
        for scale in (0.5, 0.9, 1.1, 2.0):  # any other split of the same compute is worse
            other = opt["N"] * scale
            assert fit(other, budget / (fit.kappa * other)) > opt["error"]
    # more compute, lower error, both N and D grow
    a, b = compute_optimal(fit, 1e14), compute_optimal(fit, 1e16)
    assert b["error"] < a["error"] and b["N"] > a["N"] and b["D"] > a["D"]


def test_compute_for_error_inverts_the_frontier_and_refuses_the_floor() -> None:
    n, d, y, c = _grid(sigma=0.0)
    fit = fit_joint(n, d, y, c, bootstrap=0)
    target = 1.2 * fit.E + 1.0
    need = compute_for_error(fit, target)
    assert need is not None and need["error"] == pytest.approx(target, rel=1e-6)
    assert compute_for_error(fit, fit.E * 0.99) is None
    assert math.isfinite(need["flops"]) and need["flops"] > 0


def test_joint_fit_needs_three_sizes_each_way() -> None:
    # with two data sizes the fit was made, and its frontier put D* at 1e28 atoms
    n = np.full(8, 1e4)
    with pytest.raises(ValueError, match="3\\+ model sizes"):
        fit_joint(n, np.geomspace(1, 10, 8), np.ones(8), np.ones(8))
    two_d = np.tile([1e3, 1e4], 4)
    with pytest.raises(ValueError, match="3\\+ data sizes"):
        fit_joint(np.repeat(np.geomspace(1e3, 1e5, 4), 2), two_d, np.ones(8), np.ones(8))
