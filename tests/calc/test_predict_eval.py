"""Batched prediction and ``matscale eval``: input order, budgets, metrics against a hand count."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io.trajectory import Trajectory

from matscale.calc import MatscaleCalculator, load_potential, predict
from matscale.calc.evaluation import evaluate_structures, summarise
from matscale.cli import main
from matscale.errors import DataError
from matscale.train.checkpoint import save_atomic
from tests.calc.structures import alloy
from tests.conftest import emt_structures, mace_frames, molecules


def test_batched_equals_one_at_a_time_in_input_order(tiny_model: Path) -> None:
    potential = load_potential(tiny_model)
    structures = [alloy(k, repeat=1 + k % 3) for k in range(7)]  # 1 to 27 atoms, mixed
    calc = MatscaleCalculator(potential, head="emt")
    single = []
    for atoms in structures:
        atoms.calc = calc
        single.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    for max_atoms in (30, 10_000):  # several batches, and one
        batched = predict(potential, structures, head="emt", max_atoms=max_atoms)
        assert len(batched) == len(structures)
        for r, (e, f, s) in zip(batched, single, strict=True):
            assert r["energy"] == pytest.approx(e, abs=1e-4)
            np.testing.assert_allclose(r["forces"], f, atol=1e-4)
            np.testing.assert_allclose(r["stress"], s, atol=1e-5)
            assert r["energies"].sum() == pytest.approx(r["energy"], abs=1e-4)


def test_predict_picks_heads_by_source(tiny_model: Path) -> None:
    potential = load_potential(tiny_model)
    mixed = emt_structures(3) + molecules(2)  # sources 'emt' and 'mol'
    results = predict(potential, mixed)
    assert [("stress" in r) for r in results] == [True] * 3 + [False] * 2
    by_head = predict(potential, mixed[3:], head="mol")
    assert results[3]["energy"] == pytest.approx(by_head[0]["energy"])
    with pytest.raises(DataError, match=r"record 0, field .head.: .*choose one"):
        predict(potential, [alloy(0)])  # an Atoms without a source, and two heads


def test_metrics_match_a_hand_count(tiny_model: Path) -> None:
    potential = load_potential(tiny_model)
    structures = emt_structures(6) + molecules(4)
    metrics = summarise(evaluate_structures(potential, structures, progress=False))
    results = predict(potential, structures)
    e_err = [
        1000 * (r["energy"] - s.energy) / s.n_atoms
        for s, r in zip(structures, results, strict=True)
    ]
    f_err = np.concatenate(
        [1000 * (r["forces"] - s.forces).ravel() for s, r in zip(structures, results, strict=True)]
    )
    assert metrics["energy_mae_meV_per_atom"] == pytest.approx(np.mean(np.abs(e_err)), rel=1e-5)
    assert metrics["forces_rmse_meV_per_A"] == pytest.approx(np.sqrt(np.mean(f_err**2)), rel=1e-5)
    emt_e = e_err[:6]
    assert metrics["source:emt/energy_mae_meV_per_atom"] == pytest.approx(
        np.mean(np.abs(emt_e)), rel=1e-5
    )
    assert metrics["source:mol/energy_count"] == 4
    assert metrics["family:emt/strained/energy_count"] == 2  # every third EMT cell
    assert metrics["element:H/forces_count"] > 0 and "source:mol/stress_count" not in metrics
    assert metrics["stress_count"] == 6


def test_eval_verb_on_a_file_a_folder_and_a_store(
    tiny_model: Path, tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "emt"
    folder.mkdir()
    ase.io.write(folder / "a.extxyz", [s.to_atoms() for s in emt_structures(5, seed=9)])
    out = tmp_path / "report"
    code = main(
        ["eval", str(tiny_model), str(folder), str(tiny_store), "--out", str(out), "--no-progress"]
    )
    assert code == 0
    said = capsys.readouterr()
    table = said.out
    assert "source:emt" in table and "source:mol" in table and "element:Cu" in table
    # the console names the heads that read them (a 4 eV/atom error from the default head of
    # another level of theory gave no hint why)
    assert "read by heads emt (" in table and "mol (" in table
    assert "name no head" not in said.err  # every source named its head
    assert table.splitlines()[0].split()[-2:] == ["σ", "RMSE"]  # the README's MAE and RMSE
    family = next(line for line in table.splitlines() if line.startswith("family:emt/strained"))
    assert family.split()[1] == "16" and "—" not in family.split()[2]  # 2 + 14 strained cells
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["structures"] == 5 + 64
    # no --head: each structure read by its own source's head, and the summary says which
    used = summary["metrics"]["heads_used"]
    assert summary["head"] is None and sum(used.values()) == 5 + 64 and len(used) == 2
    # a source that names no head of a model with a default head (as shipped models have):
    # the default head reads it, and the note says so
    shipped = tmp_path / "shipped.pt"
    save_atomic({**torch.load(tiny_model, weights_only=False), "default_head": "emt"}, shipped)
    other = tmp_path / "other.extxyz"
    ase.io.write(other, [s.to_atoms() for s in emt_structures(3, seed=4, source="emt_cu")])
    assert main(["eval", str(shipped), str(other), "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "read by head emt (3 structures)" in said.out
    assert "source(s) 'emt_cu', which name no head of this model: read by its default head" in (
        said.err
    )
    assert (out / "structures.csv").read_text().count("\n") == 1 + 69
    assert (out / "parity.png").stat().st_size > 1000 and (out / "errors.png").is_file()


def test_eval_verb_errors_are_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fe.extxyz"
    atoms = alloy(0)
    atoms[1].symbol = "Fe"
    atoms.info["source"] = "emt"
    atoms.calc = None
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=np.zeros((len(atoms), 3)))
    ase.io.write(path, atoms)
    assert main(["eval", str(tiny_model), str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "element Fe (Z=26) never appeared" in err[0]
        and "field 'numbers'" in err[0]
    )
    assert main(["eval", str(tmp_path / "nope.pt"), str(path)]) == 2
    assert "nope.pt: no such model file" in capsys.readouterr().err
    # --out is a folder eval makes, in a folder that must exist; a file there is not one
    assert main(["eval", str(tiny_model), str(path), "--out", str(tmp_path / "no/dir")]) == 2
    assert "no/dir: no folder to write it in" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    assert main(["eval", str(tiny_model), str(path), "--out", str(path)]) == 2
    assert "fe.extxyz: is a file: --out names the folder" in capsys.readouterr().err
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    assert main(["eval", str(tiny_model), str(empty), "--no-progress"]) == 2
    assert "empty.extxyz: no structures to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tiny_model), str(path), "--head", "dft"]) == 2
    assert "no head named 'dft'" in capsys.readouterr().err
    # a NaN label: named, not a table of NaN errors
    good = alloy(0)
    good.info["source"] = "emt"
    forces = np.zeros((len(good), 3))
    forces[2, 1] = np.nan
    good.calc = SinglePointCalculator(good, energy=1.0, forces=forces)
    nan_label = tmp_path / "nan.extxyz"
    ase.io.write(nan_label, [alloy(1), good])
    assert main(["eval", str(tiny_model), str(nan_label), "--head", "emt", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'forces': a label contains NaN or inf" in err[0], err
    assert "nan.extxyz#1" in err[0]
    # forces of the wrong shape: one line naming record and field, not numpy's broadcast error
    short = alloy(0)
    short.info["source"] = "emt"
    short.calc = SinglePointCalculator(short, energy=1.0, forces=np.zeros((len(short) - 1, 3)))
    Trajectory(str(tmp_path / "short.traj"), "w").write(short)
    assert main(["eval", str(tiny_model), str(tmp_path / "short.traj"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"field 'forces': expected shape ({len(short)}, 3), got ({len(short) - 1}, 3)"
    assert len(err) == 1 and expected in err[0] and "short.traj#0" in err[0], err


def test_eval_without_labels_and_predict_of_one_structure(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nolabels.extxyz"
    atoms = alloy(0)
    atoms.info["source"] = "emt"
    ase.io.write(path, [atoms, atoms])
    assert main(["eval", str(tiny_model), str(path), "--out", str(tmp_path / "r")]) == 2
    assert "none of the 2 structures carries an energy" in capsys.readouterr().err
    potential = load_potential(tiny_model)
    with pytest.raises(DataError, match="predict takes a list of structures, got one"):
        predict(potential, atoms)
    with pytest.raises(DataError, match=r"record 1, field 'head': this model has 2 heads"):
        predict(potential, [emt_structures(1)[0], alloy(1)])  # the second has no source
    other = alloy(1)
    other.info["source"] = "xyz"
    with pytest.raises(DataError, match=r"record 0, field 'head': its source 'xyz' names no head"):
        predict(potential, [other])
    with pytest.raises(DataError, match=r"field 'max_atoms': a batch budget must be >= 1"):
        predict(potential, [atoms], head="emt", max_atoms=0)
    with pytest.raises(DataError, match=r"field 'max_edges': a batch budget must be >= 1, got 0"):
        predict(potential, [atoms], head="emt", max_edges=0)
    (r,) = predict(potential, [atoms], head="emt", forces=False, stress=True)
    assert "forces" not in r and r["stress"].shape == (6,)
    with pytest.raises(DataError, match="field 'numbers': structure has no atoms"):
        predict(potential, [Atoms(cell=[3, 3, 3], pbc=True)], head="emt")


def test_the_cli_says_an_extrapolation_in_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A contact shorter than any in training is a warning of one line (what and where), not
    Python's file:line and source line; rank 0 of a multi-process run alone says it."""
    from ase.calculators.singlepoint import SinglePointCalculator

    path = tmp_path / "squeezed.extxyz"
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 0, 0]])
    dimer.info["source"] = "emt"
    dimer.calc = SinglePointCalculator(dimer, energy=1.0, forces=np.zeros((2, 3)))
    ase.io.write(path, dimer)
    assert main(["eval", str(tiny_model), str(path), "--no-progress"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "Cu-Cu" in line]
    assert len(err) == 1 and err[0].startswith("matscale: warning: ")
    assert "contact shorter than" in err[0] and ".py:" not in err[0]
    from matscale.cli import _show_warning
    from matscale.errors import ExtrapolationWarning

    warning = ExtrapolationWarning("a Cu-Cu contact")
    _show_warning(warning, ExtrapolationWarning, "f.py", 1, rank=1)
    assert capsys.readouterr().err == ""  # another rank: silent


def test_predict_verb_writes_the_models_numbers_and_says_whose_they_are(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`matscale predict` gives each structure the calculator's energy, forces, stress and
    per-atom energies, marks them as the model's, and a failed run loses nothing."""
    frames = [alloy(k) for k in range(3)]
    for atoms in frames:
        atoms.calc = None  # unlabelled input
    path, out = tmp_path / "in.extxyz", tmp_path / "pred.extxyz"
    ase.io.write(path, frames)
    args = ["predict", str(tiny_model), str(path), "--head", "emt", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert "3 structures with the model's energy and forces, 3 of them with stress" in (
        capsys.readouterr().out
    )
    written = ase.io.read(out, ":")
    calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    for atoms, back in zip(frames, written, strict=True):
        atoms.calc = calc
        assert back.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), 1e-5)
        np.testing.assert_allclose(back.get_forces(), atoms.get_forces(), atol=1e-5)
        np.testing.assert_allclose(back.get_stress(), atoms.get_stress(), atol=1e-6)
        assert back.get_potential_energies().sum() == pytest.approx(
            back.get_potential_energy(), abs=1e-4
        )
        assert back.info["labelled_by"] == f"matscale {tiny_model}, head emt"
    assert [f.info["key"] for f in written] == [f"{path}#{k}" for k in range(3)]
    before = out.read_bytes()
    bad = alloy(3)
    bad[0].symbol = "Fe"  # the head never saw it: the run fails after the first structures
    ase.io.write(path, [*frames, bad])
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    assert "element Fe (Z=26) never appeared" in capsys.readouterr().err
    assert out.read_bytes() == before and not list(tmp_path.glob("*.partial"))
    for wrong, message in (
        (path, "--out is the input structure's file"),
        (tmp_path / "." / "in.extxyz", "--out is the input structure's file"),  # respelt
        (tmp_path / "pred.xyz", "give --out a .extxyz name"),
        (tmp_path / "no" / "p.extxyz", "no folder to write it in"),
    ):
        assert main([*args, "--out", str(wrong)]) == 2
        assert message in capsys.readouterr().err
    # a folder input is searched for structures: --out inside it would be read, or overwritten
    folder_args = ["predict", str(tiny_model), str(tmp_path), "--head", "emt", "--no-progress"]
    assert main([*folder_args, "--out", str(path)]) == 2
    assert f"--out lies in the input folder {tmp_path}" in capsys.readouterr().err
    assert out.read_bytes() == before and path.exists()


def test_eval_says_when_the_labels_are_a_models(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # predictions evaluated as if they were reference labels gave errors of 0.0 without a word
    path = tmp_path / "emt.extxyz"
    ase.io.write(path, [s.to_atoms() for s in emt_structures(3, seed=4)])
    predicted = tmp_path / "predicted.extxyz"
    assert main(["predict", str(tiny_model), str(path), "--out", str(predicted),
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["eval", str(tiny_model), str(predicted), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: 3 of the 3 structures carry labels a model made (matscale " in err
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["metrics"]["labels_made_by_models"].values()) == 3
    assert "labelled_by" in (out / "structures.csv").read_text().splitlines()[0]
    # reference labels: no note
    assert main(["eval", str(tiny_model), str(path), "--no-progress"]) == 0
    assert "labels a model made" not in capsys.readouterr().err
    # structures without any label: predicted, in no error, and said so (n was 1 of 3 silently)
    bare = [s.to_atoms() for s in emt_structures(2, seed=5)]
    for a in bare:
        a.calc = None
    mixed = tmp_path / "mixed.extxyz"
    ase.io.write(mixed, [*bare, ase.io.read(path)])
    assert main(["eval", str(tiny_model), str(mixed), "--no-progress"]) == 0
    assert "note: 2 of the 3 structures carry no label eval can score" in capsys.readouterr().err
    # the same file twice counted every structure twice
    assert main(["eval", str(tiny_model), str(path), str(path), "--no-progress"]) == 2
    assert "emt.extxyz: given twice" in capsys.readouterr().err


def test_eval_and_predict_read_nothing_twice_and_write_no_report_into_their_inputs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder and a file inside it counted that file's structures twice, and `eval --out`
    into its input folder left a summary.json that the next eval of it could not read."""
    folder = tmp_path / "data"
    folder.mkdir()
    ase.io.write(folder / "a.extxyz", [s.to_atoms() for s in emt_structures(3, seed=2)])
    run = ["--no-progress", "--head", "emt"]
    inside = folder / "a.extxyz"
    assert main(["eval", str(tiny_model), str(folder), str(inside), *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{inside}: lies in the folder {folder}, also given" in err[0], err
    out = tmp_path / "p.extxyz"
    assert (
        main(["predict", str(tiny_model), str(inside), str(folder), "--out", str(out), *run]) == 2
    )
    assert "also given" in capsys.readouterr().err and not out.exists()
    report = folder / "report"
    assert main(["eval", str(tiny_model), str(folder), "--out", str(report), *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out lies in the input folder" in err[0] and not report.exists()
    # a .json that is no structure file, in a folder: the message says what was expected
    (folder / "notes.json").write_text('{"model": "x", "score": 1}')
    assert main(["eval", str(tiny_model), str(folder), *run]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "notes.json, record model" in err[0]
        and "not a structure file" in (err[0])
    )


def test_eval_and_predict_read_labels_under_other_keys(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels under MACE's keys (REF_energy, REF_forces) could be packed with
    --reader-option, but eval had no such option: "nothing to score"."""
    path = tmp_path / "ref.extxyz"
    ase.io.write(path, mace_frames(emt_structures(3, seed=5)))
    run = [str(tiny_model), str(path), "--head", "emt", "--no-progress"]
    assert main(["eval", *run]) == 2
    assert "--reader-option energy_key=REF_energy" in capsys.readouterr().err
    keys = ["--reader-option", "energy_key=REF_energy", "--reader-option", "forces_key=REF_forces"]
    assert main(["eval", *run, *keys]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("all"))
    assert "3" in row.split()[1:3]
    assert main(["predict", *run, *keys, "--out", str(tmp_path / "p.extxyz")]) == 0
    assert main(["eval", *run, "--reader-option", "energy"]) == 2
    assert "--reader-option 'energy' is not KEY=VALUE" in capsys.readouterr().err


def test_predict_says_when_the_default_head_read_a_source(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval said that a source naming no head was read by the default head; predict, which
    labels structures with that head's level of theory, said nothing."""
    shipped = tmp_path / "shipped.pt"
    save_atomic({**torch.load(tiny_model, weights_only=False), "default_head": "emt"}, shipped)
    other = tmp_path / "other.extxyz"
    ase.io.write(other, [s.to_atoms() for s in emt_structures(2, seed=4, source="emt_cu")])
    out = tmp_path / "p.extxyz"
    assert main(["predict", str(shipped), str(other), "--out", str(out), "--no-progress"]) == 0
    assert "source(s) 'emt_cu', which name no head of this model" in capsys.readouterr().err
    assert main(["predict", str(shipped), str(other), "--out", str(out), "--head", "emt",
                 "--no-progress"]) == 0  # fmt: skip
    assert "name no head" not in capsys.readouterr().err


DISORDERED_CIF = """data_x
_cell_length_a 3.8
_cell_length_b 3.8
_cell_length_c 3.8
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cu1 Cu 0 0 0 0.5
Au1 Au 0 0 0 0.5
"""


def test_a_disordered_cif_is_refused_not_read_as_one_element(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ASE reads a site of Cu 0.5 / Au 0.5 as pure Au (the occupancies in info): predict,
    relax and eval computed Au4 without a word."""
    path = tmp_path / "cuau.cif"
    path.write_text(DISORDERED_CIF)
    out = tmp_path / "p.extxyz"
    assert main(["predict", str(tiny_model), str(path), "--head", "emt", "--out", str(out),
                 "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuau.cif, record 0, field 'occupancy'" in err[0], err
    assert "site 0 is partly occupied (Cu 0.5, Au 0.5)" in err[0]
    assert main(["relax", str(tiny_model), str(path), "--head", "emt", "--no-progress"]) == 2
    assert "field 'occupancy'" in capsys.readouterr().err
    atoms = ase.io.read(path)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    with pytest.raises(DataError, match="partly occupied"):
        atoms.get_potential_energy()
    # a vacancy (one species below full occupancy) is no ordered crystal either; full is read
    path.write_text(DISORDERED_CIF.replace("Au1 Au 0 0 0 0.5\n", "").replace("0.5", "0.9"))
    assert main(["predict", str(tiny_model), str(path), "--head", "emt", "--out", str(out),
                 "--no-progress"]) == 2  # fmt: skip
    assert "(Cu 0.9)" in capsys.readouterr().err
    path.write_text(DISORDERED_CIF.replace("Au1 Au 0 0 0 0.5\n", "").replace("0.5", "1.0"))
    assert main(["predict", str(tiny_model), str(path), "--head", "emt", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
