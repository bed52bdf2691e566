"""The GEMM-width benchmark's timing: both products of an edge layer, as positive rates."""

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
