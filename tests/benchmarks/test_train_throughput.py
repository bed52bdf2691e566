"""The throughput benchmark's rounds: one row per configuration, the round of median speed."""

import pytest

from tests.benchmarks import load_benchmark

throughput = load_benchmark("train_throughput")


def _round(atoms_per_s: float, rss: float) -> dict:
    return {
        "name": "none-noac-fp32-compiled-w80",
        "atoms_per_s": atoms_per_s,
        "peak_rss_mib_per_process": rss,
        "achieved_gflops": atoms_per_s / 100,
    }


def test_rounds_reduce_to_the_median_round() -> None:
    rows = [_round(7000, 690), _round(9000, 650), _round(5000, 700)]
    row = throughput.median_run(rows)
    # the middle round whole (its FLOP rate with its speed), every round's speed beside it
    assert row["atoms_per_s"] == 7000 and row["achieved_gflops"] == 70
    assert row["rounds_atoms_per_s"] == [7000, 9000, 5000]
    assert row["peak_rss_mib_per_process"] == 700  # memory: the worst round
    assert "rounds_atoms_per_s" not in rows[0]  # the rounds themselves are left as they were


def test_an_even_count_takes_the_lower_middle_and_one_round_is_itself() -> None:
    assert throughput.median_run([_round(9000, 1), _round(5000, 1)])["atoms_per_s"] == 5000
    assert throughput.median_run([_round(6000, 1)])["atoms_per_s"] == 6000


def test_configuration_names_carry_the_width() -> None:
    name = throughput.config_name("ddp", False, "fp32", "compiled", 80)
    assert name == "ddp-noac-fp32-compiled-w80"
    assert name.rsplit("-w", 1)[0] == "ddp-noac-fp32-compiled"  # what --only names


def test_the_step_alone_and_the_wait_for_batches_come_from_rank_0s_rows() -> None:
    """Seven steps of 100 atoms, one per 0.1 s of the loop's clock, each 0.075 s in the step
    and 0.025 s waiting for batches; the first five untimed (compiling), two processes."""
    rows = [
        {"seconds": 0.1 * (k + 1), "atoms": 100, "structures": 5, "step_s": 0.075, "data_s": 0.025}
        for k in range(7)
    ]
    rows[0]["step_s"] = 30.0  # compiling: not timed
    got = throughput.timed_figures(rows, world=2)
    assert got["steps_timed"] == 2
    assert got["atoms_per_s"] == pytest.approx(2 * 200 / 0.2)
    assert got["structures_per_s"] == pytest.approx(2 * 10 / 0.2)
    assert got["step_atoms_per_s"] == pytest.approx(2 * 200 / 0.15)
    assert got["data_share"] == pytest.approx(0.25)
