"""The ASE calculator: the training path's numbers, derivatives, symmetries, periodic images
and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from matscale.calc import MatscaleCalculator, load_potential
from matscale.data.batch import collate, graph_sample
from matscale.data.readers import atoms_to_structure
from matscale.errors import DataError
from matscale.models.physics import predict as physics_predict
from tests.calc.structures import alloy


@pytest.fixture
def calc(tiny_model: Path) -> MatscaleCalculator:
    return MatscaleCalculator.from_file(tiny_model, head="emt")


@pytest.fixture
def calc64(tiny_model: Path) -> MatscaleCalculator:
    return MatscaleCalculator.from_file(tiny_model, head="emt", dtype="float64")


def test_calculator_equals_the_training_path(tiny_model: Path, calc: MatscaleCalculator) -> None:
    potential = load_potential(tiny_model)
    for seed in range(3):
        atoms = alloy(seed)
        s = atoms_to_structure(atoms, source="emt")
        graph = collate([graph_sample(s, 4.0, source=potential.heads.index("emt"))])
        expected = {
            k: v.detach()
            for k, v in physics_predict(potential.model, graph, forces=True, stress=True).items()
        }
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(float(expected["energy"][0]), 1e-6)
        np.testing.assert_allclose(atoms.get_forces(), expected["forces"].numpy(), atol=1e-5)
        np.testing.assert_allclose(atoms.get_stress(), expected["stress"][0].numpy(), atol=1e-6)


def test_forces_are_minus_the_energy_gradient(calc64: MatscaleCalculator) -> None:
    atoms = alloy(1)
    atoms.calc = calc64
    forces = atoms.get_forces()
    h = 1e-5
    for a, k in [(0, 0), (3, 1), (7, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[a, k] += sign * h
            moved.calc = calc64
            e.append(moved.get_potential_energy())
        assert forces[a, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-6)


def test_stress_is_the_finite_strain_derivative(calc64: MatscaleCalculator) -> None:
    atoms = alloy(2)
    atoms.calc = calc64
    stress = atoms.get_stress(voigt=False)
    volume, h = atoms.get_volume(), 1e-6
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        e = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / (2 if i != j else 1)
            strain[j, i] += sign * h / 2 if i != j else 0
            strained = atoms.copy()
            strained.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
            strained.calc = calc64
            e.append(strained.get_potential_energy())
        assert stress[i, j] == pytest.approx((e[0] - e[1]) / (2 * h) / volume, abs=1e-7)


def test_rotation_translation_and_permutation(calc64: MatscaleCalculator) -> None:
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    potential = calc64.potential
    mcalc = MatscaleCalculator(potential, head="mol")
    mol.calc = mcalc
    e, f = mol.get_potential_energy(), mol.get_forces()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    moved = mol.copy()
    moved.positions = mol.positions @ q.T + np.array([3.0, -1.0, 7.5])
    moved.calc = mcalc
    assert moved.get_potential_energy() == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(moved.get_forces(), f @ q.T, atol=1e-9)
    order = np.random.default_rng(1).permutation(len(mol))
    permuted = mol[order]
    permuted.calc = mcalc
    assert permuted.get_potential_energy() == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(permuted.get_forces(), f[order], atol=1e-9)


def test_ase_records_the_model_and_head(tiny_model: Path, calc: MatscaleCalculator) -> None:
    assert calc.todict() == {"model": str(tiny_model), "head": "emt"}


def test_per_atom_energies_sum_to_the_energy(calc: MatscaleCalculator) -> None:
    atoms = alloy(4)
    atoms.calc = calc
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-6)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_atoms_outside_the_cell_and_a_trajectory_across_its_boundary(
    calc64: MatscaleCalculator,
) -> None:
    atoms = alloy(5)
    atoms.calc = calc64
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    outside = atoms.copy()
    outside.positions[0] += 2 * atoms.cell[0] - atoms.cell[2]
    outside.positions[5] -= 3 * atoms.cell[1]
    outside.calc = calc64
    assert outside.get_potential_energy() == pytest.approx(e, abs=1e-9)
    np.testing.assert_allclose(outside.get_forces(), f, atol=1e-9)
    np.testing.assert_allclose(outside.get_stress(), s, atol=1e-9)
    # one atom walks through a face of the cell in small steps: the energy changes as the
    # forces say (trapezoid rule, no jump at the face) and equals the wrapped copy's
    walker = atoms.copy()
    walker.calc = calc64
    frac = walker.get_scaled_positions(wrap=False)[0]
    step = 0.02 * walker.cell[0] / np.linalg.norm(walker.cell[0])  # Å
    walker.positions[0] += (0.98 - frac[0]) * walker.cell[0]
    energy, force = walker.get_potential_energy(), walker.get_forces()[0]
    for _ in range(12):
        walker.positions[0] += step
        new_energy, new_force = walker.get_potential_energy(), walker.get_forces()[0]
        work = -0.5 * (force + new_force) @ step
        assert new_energy - energy == pytest.approx(work, abs=1e-6)
        energy, force = new_energy, new_force
        wrapped = walker.copy()
        wrapped.wrap()
        wrapped.calc = calc64
        assert wrapped.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    assert walker.get_scaled_positions(wrap=False)[0, 0] > 1.0  # it did leave the cell


def test_atoms_far_outside_the_cell_lose_no_digits_in_float32(calc: MatscaleCalculator) -> None:
    """Atoms of a long MD run with unwrapped positions, thousands of cells from the origin
    (~10⁴ Å, where float32's spacing is 0.001 Å), give the in-cell numbers of the float32
    model: the graph wraps positions into the cell before they are cast. Along an open
    direction nothing is wrapped: slabs, clusters and molecules are centred instead."""
    atoms = alloy(5)
    atoms.calc = calc
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    far = atoms.copy()
    whole = np.random.default_rng(0).integers(-2500, 2500, size=(len(atoms), 3))
    far.positions += whole @ atoms.cell[:]
    assert np.abs(far.positions).max() > 5_000
    far.calc = calc
    assert far.get_potential_energy() == pytest.approx(e, abs=1e-5)
    np.testing.assert_allclose(far.get_forces(), f, atol=1e-5)
    np.testing.assert_allclose(far.get_stress(), s, atol=1e-6)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0, a=3.7)
    slab.calc = calc
    e, f = slab.get_potential_energy(), slab.get_forces()
    moved = slab.copy()
    moved.positions += np.array([1000, -2000, 0]) @ slab.cell[:] + [0, 0, 9e4]
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e, abs=1e-5)
    np.testing.assert_allclose(moved.get_forces(), f, atol=1e-5)
    cluster = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cluster.pbc = False
    cluster.rattle(0.05, seed=0)
    cluster.calc = calc
    e, f = cluster.get_potential_energy(), cluster.get_forces()
    out = cluster.copy()
    out.positions += [9e4, -7e4, 3e4]  # 47 meV/Å of force error before centring
    out.calc = calc
    assert out.get_potential_energy() == pytest.approx(e, abs=1e-5)
    np.testing.assert_allclose(out.get_forces(), f, atol=1e-5)


def test_mixed_and_no_periodicity(calc: MatscaleCalculator) -> None:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0, a=3.7)
    slab.calc = calc
    assert np.isfinite(slab.get_potential_energy())
    assert slab.get_forces().shape == (12, 3)
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        slab.get_stress()
    cluster = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    cluster.calc = calc
    assert np.isfinite(cluster.get_potential_energy())
    np.testing.assert_allclose(cluster.get_forces().sum(axis=0), 0.0, atol=1e-4)


def test_heads(tiny_model: Path) -> None:
    with pytest.raises(DataError, match=r"2 heads .*emt, mol.*choose one"):
        MatscaleCalculator.from_file(tiny_model)
    with pytest.raises(DataError, match=r"no head named 'pbe'; this model's heads are emt, mol"):
        MatscaleCalculator.from_file(tiny_model, head="pbe")


def test_set_head_switches_the_head_and_drops_the_old_results(tiny_model: Path) -> None:
    # calc.set(head=...) changed calc.parameters but kept computing with the old head (and
    # accepted a head the model does not have)
    calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    metal = alloy(0)
    metal.calc = calc
    metal.get_potential_energy()
    assert calc.set(head="mol") == {"head": "mol"}
    assert calc.todict()["head"] == calc.head == "mol"
    with pytest.raises(DataError, match=r"never appeared in the training data of head 'mol'"):
        metal.get_potential_energy()  # computed again, by the molecules' head
    water = molecule("H2O")
    water.calc = calc
    fresh = water.copy()
    fresh.calc = MatscaleCalculator.from_file(tiny_model, head="mol")
    assert water.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-6)
    with pytest.raises(DataError, match=r"no head named 'pbe'"):
        calc.set(head="pbe")
    assert calc.head == "mol" and calc.parameters["head"] == "mol"
    with pytest.raises(ValueError, match="model cannot be changed"):
        calc.set(model="other.pt")
    # settings it would ignore (and write into trajectories as if they took effect) are refused,
    # in set and as the constructor's keywords (a typo included)
    with pytest.raises(ValueError, match=r"no setting 'dtype': .* chosen when the model is loaded"):
        calc.set(dtype="float64")
    with pytest.raises(ValueError, match=r"no setting 'dtpye'"):
        MatscaleCalculator.from_file(tiny_model, head="emt", dtpye="float64")
    assert "dtype" not in calc.parameters


def test_unseen_element_is_an_error_naming_it(calc: MatscaleCalculator) -> None:
    atoms = alloy(0)
    atoms[0].symbol = "Fe"
    atoms.calc = calc
    with pytest.raises(DataError, match=r"element Fe \(Z=26\) never appeared .* head 'emt'"):
        atoms.get_potential_energy()
    water = molecule("H2O")
    water.calc = calc  # the 'emt' head has seen no H or O
    with pytest.raises(DataError, match=r"H \(Z=1\), O \(Z=8\)"):
        water.get_potential_energy()


def test_zero_volume_cell_is_an_error(calc: MatscaleCalculator) -> None:
    atoms = alloy(0)
    atoms.set_cell([[3, 0, 0], [0, 3, 0], [3, 3, 0]])
    atoms.calc = calc
    with pytest.raises(DataError, match=r"field 'cell': periodic cell has zero volume"):
        atoms.get_potential_energy()
    atoms = alloy(0)
    atoms.positions[2, 1] = np.nan
    atoms.calc = calc
    with pytest.raises(DataError, match=r"field 'positions': contains NaN"):
        atoms.get_potential_energy()


def test_degenerate_periodic_cells_are_errors_not_crashes(calc: MatscaleCalculator) -> None:
    """Parallel periodic vectors of a slab stopped the process inside vesin (SIGFPE), and
    nearly parallel ones made it search forever; both are refused, naming the cell."""
    slab = bulk("Cu", cubic=True)
    slab.pbc = (True, True, False)
    slab.set_cell([[3.6, 0, 0], [-7.2, 0, 0], [0, 0, 0]], scale_atoms=False)
    slab.calc = calc
    with pytest.raises(DataError, match=r"field 'cell': periodic cell is degenerate: along"):
        slab.get_potential_energy()
    for pbc, cell in (
        (True, [[3.6, 0, 0], [3.6, 1e-7, 0], [0, 0, 3.6]]),  # volume 1e-6 Å³: passed before
        ((True, True, False), [[3.6, 0, 0], [3.6, 1e-4, 0], [0, 0, 0]]),
        (True, np.diag([1e-3, 3.6, 3.6])),  # was reported as atom 0 on top of itself
    ):
        atoms = bulk("Cu", cubic=True)
        atoms.pbc = pbc
        atoms.set_cell(cell, scale_atoms=False)
        atoms.calc = calc
        with pytest.raises(DataError, match=r"field 'cell': periodic cell is degenerate"):
            atoms.get_potential_energy()
    ok = bulk("Cu", "fcc", a=3.6)  # a primitive cell: faces 2.1 Å apart, fine
    ok.calc = calc
    assert np.isfinite(ok.get_potential_energy())


def test_atoms_on_top_of_each_other_or_flown_away_are_errors(calc: MatscaleCalculator) -> None:
    atoms = alloy(0)
    atoms.positions[3] = atoms.positions[1]
    atoms.calc = calc
    # not a number: at distance 0 no force has a direction (it came out exactly zero)
    with pytest.raises(DataError, match=r"field 'positions': atoms 1 and 3 are 0 Å apart"):
        atoms.get_potential_energy()
    for far in (5e5, 1e8):  # past ~4.5e5 Å the neighbour search killed the process
        pair = Atoms("Cu2", positions=[[0, 0, 0], [far, 0, 0]])
        pair.calc = calc
        with pytest.raises(DataError, match=r"field 'positions': an atom lies .* along x"):
            pair.get_potential_energy()
    pair = Atoms("Cu2", positions=[[0, 0, 0], [9e4, 0, 0]])  # far, but allowed: two free atoms
    pair.calc = calc
    assert pair.get_potential_energy() == pytest.approx(2 * calc.get_potential_energy(Atoms("Cu")))


def test_model_paths_that_are_no_file_say_what_they_are(tiny_model: Path, tmp_path: Path) -> None:
    # a run's folder points at its model file, a missing file lists the shipped models
    run_folder = tiny_model.parent
    with pytest.raises(
        DataError, match=rf"is a folder, not a model file; its model file is .*{tiny_model.name}"
    ):
        MatscaleCalculator.from_file(run_folder, head="emt")
    with pytest.raises(DataError, match=r"is a folder, not a model file \(and holds no model.pt\)"):
        load_potential(tmp_path)
    with pytest.raises(DataError, match=r"nope.pt: no such model file \(shipped models: matscale-"):
        MatscaleCalculator.from_file(tmp_path / "nope.pt", head="emt")
    # a shipped model's name works where a model file does
    calc = MatscaleCalculator.from_file("matscale-foundation-v2", head="emt-metals")
    assert "teacher-sevennet" in calc.potential.heads


def test_model_files_bad_and_old(tiny_model: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk.pt: not a matscale model file"):
        load_potential(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(DataError, match=r"other.pt: not a matscale model file \(no format"):
        load_potential(other)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": "matscale-model/2", "code": print}, unsafe)  # a pickled function
    with pytest.raises(DataError, match=r"unsafe.pt: the file holds objects beyond tensors"):
        load_potential(unsafe)
    # a run's checkpoint (numpy's RNG state in its pickle) given as a model: say what it is
    checkpoint = sorted((tiny_model.parent / "checkpoints").glob("step-*.pt"))[-1]
    with pytest.raises(DataError, match=r"a training checkpoint, not a model file: `matscale "
                       r"export RUN_FOLDER`"):  # fmt: skip
        load_potential(checkpoint)
    with pytest.raises(DataError, match=r"missing.pt: no such model file"):
        load_potential(tmp_path / "missing.pt")
    # a file of format 1 (no transform saved) loads with the transform it was trained with
    blob = torch.load(tiny_model, weights_only=False)
    old = {k: v for k, v in blob.items() if k != "graph"} | {"format": "matscale-model/1"}
    torch.save(old, tmp_path / "v1.pt")
    assert load_potential(tmp_path / "v1.pt").graph == load_potential(tiny_model).graph
    torch.save(blob | {"format": "matscale-model/9"}, tmp_path / "v9.pt")
    with pytest.raises(DataError, match=r"format 'matscale-model/9'; this matscale reads"):
        load_potential(tmp_path / "v9.pt")


def test_the_model_file_records_the_transform(tiny_model: Path) -> None:
    potential = load_potential(tiny_model)
    g = potential.graph
    assert g.cutoff == 4.0 and g.max_neighbours is None and g.heads == ("emt", "mol")
    assert (
        g.dtype == "float32" and load_potential(tiny_model, dtype="float64").dtype == torch.float64
    )
    with pytest.raises(DataError, match="dtype must be float32 or float64"):
        load_potential(tiny_model, dtype="float16")  # type: ignore[arg-type]
    # torch's own dtypes too (torch.float64 was refused: only the string was known)
    assert load_potential(tiny_model, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(DataError, match="dtype must be float32 or float64"):
        load_potential(tiny_model, dtype=torch.bfloat16)
    assert g.elements == ((29, 46, 79), (1, 6, 7, 8))
    card = tiny_model.with_suffix(".md").read_text()
    calculator = "its source's calculator"
    for text in (f"| emt | {calculator} | Cu Pd Au |", f"| mol | {calculator} | H C N O |",
                 "cutoff | 4 Å", "## Errors",
                 "Structures behind each column: validation "):  # fmt: skip
        assert text in card


def test_export_of_a_checkpoint_written_before_transforms_were_saved(
    tiny_model: Path, tmp_path: Path
) -> None:
    from matscale.cli import main
    from matscale.train.checkpoint import list_checkpoints, load_checkpoint

    ck = load_checkpoint(list_checkpoints(tiny_model.parent)[-1])
    dropped = ("graph", "train_structures", "hardware", "labelled_by")
    old = {k: v for k, v in ck.items() if k not in dropped}
    (tmp_path / "checkpoints").mkdir()
    torch.save(old, tmp_path / "checkpoints" / "step-00000006.pt")
    assert main(["export", str(tmp_path)]) == 0
    exported = load_potential(tmp_path / "model.pt")
    assert exported.graph == load_potential(tiny_model).graph
    # count unknown; the labellers read from the run's store (the same content)
    assert "| emt | its source's calculator | Cu Pd Au | — |" in (tmp_path / "model.md").read_text()


def test_export_replaces_only_an_earlier_export(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `export RUN --out config.yaml` replaced the config by a model file (and wrote config.md
    # beside it), `--out` a checkpoint replaced the checkpoint, and a folder left RUN.tmp
    from matscale.cli import main

    run = tiny_model.parent
    checkpoint = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    config, notes = tmp_path / "config.yaml", tmp_path / "notes.md"
    config.write_text("name: mine\n")
    notes.write_text("my notes\n")
    before = checkpoint.read_bytes()
    for out, named, why in [
        (config, config, "is not a matscale model file"),
        (checkpoint, checkpoint, "is not a matscale model file"),
        (tmp_path, tmp_path, "is a folder"),
        (tmp_path / "notes.pt", notes, "model card of notes.pt would replace this file"),
        # a model written as m.extxyz, and a mistyped folder made without a word
        (tmp_path / "m.extxyz", tmp_path / "m.extxyz", "a model file's name ends in .pt"),
        (tmp_path / "no/dir/m.pt", tmp_path / "no/dir/m.pt", "no folder to write it in"),
    ]:
        assert main(["export", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{named}: " in err and why in err, err
    assert config.read_text() == "name: mine\n" and notes.read_text() == "my notes\n"
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "notes.md"]  # no .tmp
    # an earlier export, and its card, are replaced
    again = tmp_path / "again.pt"
    assert main(["export", str(run), "--out", str(again)]) == 0
    assert main(["export", str(run), "--out", str(again)]) == 0
    assert load_potential(again).graph == load_potential(tiny_model).graph
    # the run's own test errors stay (a checkpoint holds validation errors only: the export
    # of a finished run dropped every test/* figure from the file and its card)
    from matscale.calc.model_file import read_model_file

    metrics = read_model_file(tiny_model)["metrics"]
    assert any(k.startswith("test/") for k in metrics)
    assert read_model_file(again)["metrics"] == metrics


def test_contacts_shorter_than_any_in_training_are_warned_about(
    tiny_model: Path, calc: MatscaleCalculator
) -> None:
    import warnings
    from dataclasses import replace

    from matscale.errors import ExtrapolationWarning

    shortest = dict(((a, b), d) for a, b, d in calc.potential.graph.shortest[0])
    assert 1.5 < shortest[(29, 29)] < 3.0  # the store's closest Cu-Cu pair, in Å
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a structure like the training data: silent
        atoms = bulk("Cu", "fcc", a=3.7).repeat(2)
        atoms.calc = calc
        atoms.get_potential_energy()
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 0, 0]])
    dimer.calc = calc
    with pytest.warns(ExtrapolationWarning, match=r"a Cu-Cu contact shorter than \d\.\d\d Å"):
        squeezed = dimer.get_potential_energy()
    apart = dimer.copy()
    apart.positions[1, 0] = 2.5
    apart.calc = calc
    assert squeezed > apart.get_potential_energy() + 10.0  # eV: the pair prior repels
    # a model saved before the distances were recorded warns about nothing
    old = replace(calc.potential, graph=replace(calc.potential.graph, shortest=()))
    dimer.calc = MatscaleCalculator(old, head="emt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dimer.get_potential_energy()
