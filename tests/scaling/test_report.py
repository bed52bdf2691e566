"""Analysis, figures and the Markdown report on a synthetic 5 × 4 sweep with a known law."""

import json
from pathlib import Path

import numpy as np
import pytest

from matscale.cli import main
from matscale.scaling.analysis import analyse
from matscale.scaling.report import write_report
from matscale.scaling.results import RESULTS, append_row

N = np.geomspace(1e3, 1e5, 5)
D = np.geomspace(1e4, 1e5, 4)


def _rows(flat_energy: bool = False) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for n in N:
        for d in D:
            forces = (20 + 900 * n**-0.3 + 4e4 * d**-0.5) * np.exp(rng.normal(0, 0.01))
            energy = 7.0 * np.exp(rng.normal(0, 0.05)) if flat_energy else forces / 10
            rows.append(
                {
                    "sweep": "synthetic",
                    "run": f"n{n:.0f}-d{d:.0f}",
                    "config_hash": f"{n:.0f}-{d:.0f}",
                    "width": int(n**0.5),
                    "depth": 3,
                    "parameters": int(n) + 100,
                    "non_embedding_parameters": int(n),
                    "fraction": d / D.max(),
                    "seed": 0,
                    "train_structures": int(d / 10),
                    "train_atoms": int(d),
                    "steps": 100,
                    "atoms_seen": int(10 * d),
                    "edges_seen": int(300 * d),
                    "training_flops": 6 * 20 * int(n) * int(d),
                    "train_seconds": 1.0,
                    "final": {
                        "test/forces_mae_meV_per_A": forces,
                        "test/energy_mae_meV_per_atom": energy,
                    },
                    "best": {},
                }
            )
    return rows


def test_analysis_fits_slices_joint_and_frontier() -> None:
    a = analyse(_rows(), "test/forces_mae_meV_per_A", bootstrap=20)
    assert len(a.by_d) == 4 and len(a.by_n) == 5
    assert all(not isinstance(f, str) for f in a.by_d.values())  # 5 points per slice: fitted
    assert a.joint.alpha == pytest.approx(0.3, abs=0.1)  # type: ignore[union-attr]
    assert a.joint.beta == pytest.approx(0.5, abs=0.1)  # type: ignore[union-attr]
    errors = [f["error"] for f in a.frontier]
    assert errors == sorted(errors, reverse=True)  # more compute, less error
    reachable = [t for t in a.targets if t["flops"] is not None]
    assert reachable and all(t["error"] > a.joint.E for t in reachable)  # type: ignore[union-attr]


def test_report_writes_tables_figures_and_verdicts(tmp_path: Path, capsys) -> None:
    for r in _rows(flat_energy=True):
        append_row(tmp_path / RESULTS, r)
    path = write_report(tmp_path, tmp_path / "out", bootstrap=20, command="matscale report x")
    text = path.read_text()
    assert text.startswith("# Scaling study: synthetic")
    assert "matscale report x" in text and "### Joint fit" in text
    assert "Compute-optimal allocation" in text and "To reach a test force MAE" in text
    # energies were made flat: the report says the power law finds no improvement
    energy = text[text.index("## test energy MAE") :]
    assert "indistinguishable from 0" in energy
    forces = text[text.index("## test force MAE") : text.index("## test energy MAE")]
    assert "indistinguishable from 0" not in forces
    for stem in ("test_forces_meV_per_A_vs_N", "test_forces_meV_per_A_vs_D",
                 "test_forces_meV_per_A_frontier", "test_energy_meV_per_atom_vs_N"):  # fmt: skip
        for suffix in (".png", ".svg"):
            assert (tmp_path / "out" / f"{stem}{suffix}").stat().st_size > 1000
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits[0]["metric"] == "test/energy_mae_meV_per_atom"
    assert 0.2 < fits[1]["joint"]["alpha"] < 0.4

    assert main(["fit", str(tmp_path), "--metric", "test/forces_mae_meV_per_A",
                 "--bootstrap", "5"]) == 0  # fmt: skip
    assert '"beta"' in capsys.readouterr().out
    assert main(["fit", str(tmp_path), "--metric", "test/nothing", "--bootstrap", "5"]) == 2
    assert "no final metric 'test/nothing'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as stopped:  # was an IndexError traceback
        main(["fit", str(tmp_path), "--bootstrap", "-5"])
    assert stopped.value.code == 2
    assert "--bootstrap: expected an integer ≥ 0, got -5" in capsys.readouterr().err


def test_a_cut_row_is_named_not_skipped(tmp_path: Path) -> None:
    from matscale.errors import DataError
    from matscale.scaling.results import read_rows

    rows = _rows()[:2]
    append_row(tmp_path / RESULTS, rows[0])
    with open(tmp_path / RESULTS, "a") as f:
        f.write(json.dumps(rows[1])[:50] + "\n")  # a crash mid-write
    with pytest.raises(DataError, match=r"line 2: not a JSON row .* Remove that line"):
        read_rows(tmp_path / RESULTS)


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        # a run appended twice weighed double in every fit (the fitted E moved)
        (
            lambda rows: rows.append(dict(rows[0])),
            r"record 5, field 'config_hash': the run n\d+-d\d+ again \(record 1\)",
        ),
        # a row without a size said only "matscale: error: 'non_embedding_parameters'"
        (
            lambda rows: rows[2].pop("non_embedding_parameters"),
            r"record 3, field 'non_embedding_parameters': missing",
        ),
        (
            lambda rows: rows[1].update(train_atoms=-5),
            r"record 2, field 'train_atoms': expected a positive number, got -5",
        ),
        # a NaN or text error failed one sub-fit with SciPy's words, or a float() message
        (
            lambda rows: rows[3]["final"].update({"test/forces_mae_meV_per_A": float("nan")}),
            r"results\.jsonl, record 4, field 'final\.test/forces_mae_meV_per_A': expected an "
            r"error ≥ 0, got nan",
        ),
        (
            lambda rows: rows[3]["final"].update({"test/forces_mae_meV_per_A": "abc"}),
            r"expected an error ≥ 0, got 'abc'",
        ),
    ],
)
def test_a_row_the_fits_cannot_use_is_named(tmp_path: Path, edit, words) -> None:
    from matscale.errors import DataError

    rows = _rows()[:4]
    edit(rows)
    for r in rows:
        append_row(tmp_path / RESULTS, r)
    with pytest.raises(DataError, match=words):
        write_report(tmp_path, tmp_path / "out", metrics=("test/forces_mae_meV_per_A",),
                     bootstrap=2, figures=False)  # fmt: skip


def test_runs_table_puts_validation_and_held_out_errors_beside_test(tmp_path: Path) -> None:
    rows = _rows()
    for r in rows:
        f = r["final"]["test/forces_mae_meV_per_A"]
        r["final"].update({"forces_mae_meV_per_A": 0.9 * f, "holdout/forces_mae_meV_per_A": 3 * f})
        append_row(tmp_path / RESULTS, r)
    path = write_report(tmp_path, tmp_path / "out", metrics=("test/forces_mae_meV_per_A",),
                        bootstrap=5, figures=False)  # fmt: skip
    head = next(line for line in path.read_text().splitlines() if line.startswith("| run |"))
    assert head.endswith(
        "| test force MAE (meV/Å) | val force MAE (meV/Å) | holdout force MAE (meV/Å) |"
    )


def test_no_frontier_from_an_exponent_indistinguishable_from_zero() -> None:
    # a held-out error flat in N gave alpha = 7e-20 and a frontier of N* = 0 and D* = 1e28
    # atoms at every compute, with a table of targets to the atom
    rows = _rows(flat_energy=True)
    flat = analyse(rows, "test/energy_mae_meV_per_atom", bootstrap=20)
    assert "indistinguishable from 0" in flat.withheld
    assert flat.frontier == [] and flat.targets == []
    steep = analyse(rows, "test/forces_mae_meV_per_A", bootstrap=20)
    assert steep.withheld == "" and steep.frontier and steep.targets


def test_which_best_defaults_to_the_validation_errors_it_holds(tmp_path: Path, capsys) -> None:
    """`fit --which best` failed with its own default metrics: `best` (the evaluation of
    lowest validation error) holds validation errors only, and the defaults were test/."""
    for r in _rows():
        r["best"] = {k.removeprefix("test/"): v for k, v in r["final"].items()}
        append_row(tmp_path / RESULTS, r)
    assert main(["fit", str(tmp_path), "--which", "best", "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert '"forces_mae_meV_per_A"' in out and "test/" not in out
    asked = ["fit", str(tmp_path), "--which", "best", "--metric", "test/forces_mae_meV_per_A"]
    assert main([*asked, "--bootstrap", "5"]) == 2
    assert "best holds the validation errors of its evaluation: drop test/" in (
        capsys.readouterr().err
    )
