"""The largest-system benchmark's pieces: a model file at another width, and the cap arithmetic."""

from pathlib import Path

from ase.build import bulk

from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.calc.model_file import load_potential
from tests.benchmarks import load_benchmark
from tests.calc.conftest import train_tiny

largest = load_benchmark("largest_system")


def test_a_model_file_at_another_width_loads_and_computes(tiny_store: Path, tmp_path: Path) -> None:
    model = train_tiny(tiny_store, tmp_path / "runs")
    wide = largest.at_width(model, 24, tmp_path / "w24.pt")
    potential = load_potential(wide)
    assert potential.model.config.width == 24
    assert potential.graph == load_potential(model).graph  # heads, elements, cutoff kept
    assert largest.parameters(wide) > largest.parameters(model)
    assert potential.model.config.readout_width == 0  # readouts scale with the width
    atoms = bulk("Cu", cubic=True)
    atoms.calc = MatscaleCalculator.from_file(wide, head=potential.heads[0])
    assert atoms.get_forces().shape == (4, 3)


def test_the_cap_gives_the_atoms_where_the_line_reaches_it() -> None:
    fit = {"mib_per_1k_atoms": 50.0, "intercept_mib": 300.0}
    assert largest.largest(fit, 800.0) == 10_000
    assert largest.largest(fit, 200.0) == 0  # the fixed cost alone is over the cap
    assert largest.largest({"mib_per_1k_atoms": 0.0, "intercept_mib": 1.0}, 800.0) is None


def test_the_worker_reports_the_whole_process_peak(tiny_store: Path, tmp_path: Path) -> None:
    model = train_tiny(tiny_store, tmp_path / "runs")
    head = load_potential(model).heads[0]
    small, big = (largest.measure(model, head, n, 0, threads=1) for n in (100, 3000))
    assert small["atoms"] < 200 < 2500 < big["atoms"] and big["edges"] > small["edges"]
    assert big["peak_rss_mib"] > small["peak_rss_mib"] > 100  # torch alone takes more
    assert largest.measure(model, head, 3000, 256, threads=1)["atoms"] == big["atoms"]


def test_the_compiled_setting_measures_the_same_structure(tiny_store: Path, tmp_path: Path) -> None:
    model = train_tiny(tiny_store, tmp_path / "runs")
    head = load_potential(model).heads[0]
    eager = largest.measure(model, head, 500, 0, threads=1)
    compiled = largest.measure(model, head, 500, 0, threads=1, compile=True)
    assert compiled["atoms"] == eager["atoms"] and compiled["edges"] == eager["edges"]
    assert compiled["peak_rss_mib"] > 100 and compiled["seconds"] > 0
