"""The inference benchmark's core, in-process on a tiny trained model: rows of two small
sizes (no subprocesses, no MACE), the structures it builds, and the JSON it would write."""

import json
from pathlib import Path

import numpy as np
import pytest

from matscale.calc.model_file import Potential, load_potential
from tests.benchmarks import load_benchmark
from tests.calc.conftest import train_tiny

bench = load_benchmark("inference")


@pytest.fixture(scope="module")
def potential(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Potential:
    """The tiny conservative model (heads "emt": Cu Pd Au, and "mol")."""
    return load_potential(train_tiny(tiny_store, tmp_path_factory.mktemp("bench-inference")))


def test_structures_are_reproducible_alloys_near_the_target_size() -> None:
    for n in (10, 100, 1000, 4000, 100_000):
        a, b, c = bench.supercell_shape(n)
        assert a <= b <= c <= a + 2
        assert 0.7 < 4 * a * b * c / n < 1.3
    s1, s2 = bench.alloy(50, [29, 46, 79], seed=3), bench.alloy(50, [29, 46, 79], seed=3)
    np.testing.assert_array_equal(s1.positions, s2.positions)
    np.testing.assert_array_equal(s1.numbers, s2.numbers)
    assert s1.n_atoms == bench.alloy_atoms(50) == 48 and s1.pbc.all()
    assert set(s1.numbers.tolist()) <= {29, 46, 79}
    assert bench.pick_elements((13, 28, 29, 46, 47, 78, 79)) == [28, 29, 46, 79]
    assert bench.pick_elements((29, 46, 79)) == [29, 46, 79]


def test_rows_and_json(potential: Potential, capsys: pytest.CaptureFixture[str]) -> None:
    head = potential.graph.head_index("emt")
    elements = bench.pick_elements(potential.graph.elements[head])
    measured = [
        bench.measure_matscale(
            potential, head, bench.alloy(n, elements), repeats=2, budget_s=0.2, stress=stress
        )
        for n, stress in ((10, False), (50, True))
    ]
    rows = [row for _, row in measured]
    assert [graph.positions.shape[0] for graph, _ in measured] == [r["atoms"] for r in rows]
    for r in rows:
        assert r["atoms"] > 0 and r["edges"] > 0 and r["edges_per_atom"] > 1
        assert r["graph_ms"] > 0 and r["model_ms"] > 0
        assert r["atoms_per_s_model"] > r["atoms_per_s_total"] > 0
        assert r["rss_rise_mib"] >= 0 and r["bytes_per_atom"] >= 0
        assert r["model_timing"]["repeats"] >= 1
    assert [r["outputs"] for r in rows] == ["energy+forces", "energy+forces+stress"]
    mace = [{**rows[1], "model": "mace", "atoms_per_s_model": rows[1]["atoms_per_s_model"] / 4}]
    result = bench.payload(
        rows,
        mace,
        model_path="tiny/model.pt",
        head="emt",
        parameters=sum(p.numel() for p in potential.model.parameters()),
        elements=elements,
        threads=1,
        device="cpu",
    )
    back = json.loads(json.dumps(result))
    assert back["rows"][0]["atoms"] == 12 and back["rows"][1]["atoms"] == 48
    assert back["parameters"] > 0 and back["threads"] == 1 and back["torch"]
    (ratio,) = back["ratios_matscale_over_mace"]
    assert ratio["atoms"] == 48 and ratio["model"] == pytest.approx(4.0)
    fit = back["memory_fit"]["rss"]
    assert fit["points"] == 2 and fit["r2"] == pytest.approx(1.0)
    bench.print_table(result)
    assert "matscale / MACE at 48 atoms: atoms/s 4.0x" in capsys.readouterr().out


def test_linear_fit() -> None:
    rows = [{"atoms": n, "rss_rise_mib": 3.0 + 0.2 * n / 1000} for n in (1000, 4000, 10_000)]
    fit = bench.linear_fit(rows)
    assert fit["mib_per_1k_atoms"] == pytest.approx(0.2)
    assert fit["intercept_mib"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert bench.linear_fit(rows[:1]) is None


def test_the_compiled_row_against_the_eager_one() -> None:
    eager = {"model_ms": 30.0, "rss_rise_mib": 200.0}
    compiled = {
        "model_ms": 10.0,
        "atoms_per_s_model": 5000.0,
        "compile_s": 12.0,
        "model_rise_mib": 90.0,
        "rss_rise_mib": 100.0,
        "max_force_difference_eV_per_A": 1e-6,
        "model_timing": {"seconds": 0.01},
    }
    summary = bench.compiled_summary(compiled, eager)
    assert summary["ratio_compiled_over_eager"] == pytest.approx(3.0)
    assert summary["rss_rise_over_eager"] == pytest.approx(0.5)
    assert bench.compiled_summary({"error": "InductorError: x"}, eager) == (
        "failed: InductorError: x"
    )
