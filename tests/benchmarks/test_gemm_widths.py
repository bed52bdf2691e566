"""The GEMM-width benchmark's timing: both products of an edge layer, as positive rates."""

from pathlib import Path

import torch

from tests.benchmarks import load_benchmark

gemm = load_benchmark("gemm_widths")


def test_both_edge_products_are_timed() -> None:
    rates = gemm.gemm_gflops(edges=500, width=16, repeats=2)
    assert set(rates) == {"edge", "weight_grad"}
    assert all(rate > 0 for rate in rates.values())


def test_radial_products_are_timed_both_ways() -> None:
    seconds = gemm.narrow_seconds(edges=300, width=16, n_radial=4, repeats=2)
    assert set(seconds) == {
        "from_narrow_autograd", "from_narrow_ours", "to_narrow_autograd", "to_narrow_ours"
    }  # fmt: skip
    assert all(s > 0 for s in seconds.values())


def test_the_step_comparison_swaps_the_products_and_restores_them(tiny_store: Path) -> None:
    from matscale.models import explicit_forces
    from matscale.models.narrow import linear_from_narrow

    with gemm.radial_products("autograd"):
        assert explicit_forces.linear_from_narrow is torch.nn.functional.linear
    assert explicit_forces.linear_from_narrow is linear_from_narrow
    seconds = gemm.step_seconds_both_ways(tiny_store, 8, 1, compiled=False, rounds=2, steps=3)
    assert {k: len(v) for k, v in seconds.items()} == {"autograd": 2, "ours": 2}
    assert all(s > 0 for v in seconds.values() for s in v)
