"""The throughput benchmark's rounds: one row per configuration, the round of median speed."""

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
