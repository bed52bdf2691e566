"""The torch-sim model: the ASE calculator's numbers for every system of a batched state,
torch-sim's cell and stress conventions, batched MD, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from matscale.calc import MatscaleCalculator, Potential, load_potential
from matscale.errors import DataError
from tests.calc.structures import alloy

ts = pytest.importorskip("torch_sim")

from matscale.calc.torchsim import MatscaleTorchSimModel  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


def systems() -> list[Atoms]:
    """Three periodic cells of 8, 12 and 16 atoms."""
    cubic = bulk("Pd", "fcc", a=3.8, cubic=True).repeat((2, 2, 1))
    cubic.set_cell(cubic.cell[:] @ np.array([[1, 0.1, 0], [0, 1, 0], [0.05, 0, 1]]), True)
    cubic.symbols[[1, 6, 11]] = "Au"
    cubic.rattle(0.05, seed=3)
    return [alloy(0, (2, 2, 2), shear=0.05), alloy(1, (3, 2, 2), shear=0.05), cubic]


@pytest.fixture(scope="module")
def potential(tiny_model: Path) -> Potential:
    return load_potential(tiny_model)


def reference(potential: Potential, atoms: Atoms, head: str) -> dict[str, np.ndarray]:
    """What the ASE calculator gives for ``atoms``."""
    atoms = atoms.copy()
    atoms.calc = MatscaleCalculator(potential, head=head)
    out = {"energy": np.array(atoms.get_potential_energy()), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress(voigt=False)
    return out


def test_batched_state_equals_the_ase_calculator(potential: Potential) -> None:
    atoms_list = systems()
    assert not np.allclose(atoms_list[0].cell[:], atoms_list[0].cell[:].T)
    model = MatscaleTorchSimModel(potential, head="emt")
    assert model.compute_stress and model.compute_forces
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    state = ts.io.atoms_to_state(atoms_list, model.device, torch.float64)
    before = state.positions.clone()
    # torch-sim keeps the lattice vectors as columns: its cell is ASE's transposed
    torch.testing.assert_close(state.cell[0], torch.as_tensor(atoms_list[0].cell[:].T))

    out = model(state)
    assert out["energy"].shape == (3,) and out["energy"].dtype == torch.float64
    assert out["forces"].shape == (36, 3) and out["stress"].shape == (3, 3, 3)
    start = 0
    for b, atoms in enumerate(atoms_list):
        ref = reference(potential, atoms, "emt")
        atoms_b = slice(start, start + len(atoms))
        start += len(atoms)
        np.testing.assert_allclose(out["energy"][b].numpy(), ref["energy"], rtol=RTOL)
        np.testing.assert_allclose(out["forces"][atoms_b].numpy(), ref["forces"], RTOL, ATOL)
        np.testing.assert_allclose(out["stress"][b].numpy(), ref["stress"], RTOL, ATOL)
        assert np.abs(ref["stress"]).max() > 1e-4  # a real check, not zeros against zeros

    # a dict of the state's fields gives the same, and the state is left as it was
    fields = {k: getattr(state, k) for k in ("positions", "cell", "pbc", "atomic_numbers")}
    again = model({**fields, "system_idx": state.system_idx})
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(again[key], out[key])
    assert torch.equal(state.positions, before)


def test_molecules_with_the_other_head(potential: Potential) -> None:
    mols = [molecule("CH4"), molecule("H2O"), molecule("C2H6")]
    model = MatscaleTorchSimModel(potential, head="mol")
    state = ts.io.atoms_to_state(mols, model.device, model.dtype)
    out = model(state)
    start = 0
    for b, atoms in enumerate(mols):
        ref = reference(potential, atoms, "mol")
        atoms_b = slice(start, start + len(atoms))
        start += len(atoms)
        np.testing.assert_allclose(out["energy"][b].numpy(), ref["energy"], rtol=RTOL)
        np.testing.assert_allclose(out["forces"][atoms_b].numpy(), ref["forces"], RTOL, ATOL)
    assert torch.all(out["stress"] == 0)  # no volume: zeros, as predict_graph gives


def test_stress_has_the_sign_torch_sim_relaxes_with(tiny_model: Path) -> None:
    """One small cell step of torch-sim's own gradient descent lowers the energy of a
    strained one-atom cell (no forces: the energy changes through the stress alone)."""
    model = MatscaleTorchSimModel(load_potential(tiny_model, dtype="float64"), head="emt")
    atoms = bulk("Cu", "fcc", a=3.5)
    atoms.set_cell(atoms.cell[:] @ np.array([[1.03, 0.04, 0], [0, 0.98, 0.02], [0, 0, 1.0]]), True)
    state = ts.io.atoms_to_state([atoms], model.device, model.dtype)
    stress = model(state)["stress"]
    assert stress.abs().max() > 1e-4
    # lr sized so the cell moves by a strain of ~1e-4 (first order dominates)
    lr = 1e-4 / float((stress.abs().max() * state.volume).item())
    init, step = ts.unit_cell_gradient_descent(model, positions_lr=0.0, cell_lr=lr)
    gd = init(state)
    e0 = gd.energy.clone()
    gd = step(gd)
    assert not torch.allclose(gd.cell, state.cell)
    assert gd.energy.item() < e0.item()


def test_batched_md_matches_the_ase_calculator_at_the_end(potential: Potential) -> None:
    atoms_list = systems()
    model = MatscaleTorchSimModel(potential, head="emt")
    final = ts.integrate(
        system=atoms_list,
        model=model,
        integrator=ts.nvt_langevin,
        n_steps=20,
        temperature=300.0,
        timestep=0.002,  # ps
        seed=0,
    )
    assert final.n_systems == 3
    moved = final.positions - ts.io.atoms_to_state(atoms_list, model.device, model.dtype).positions
    assert moved.abs().max() > 1e-3
    start = 0
    for b, atoms in enumerate(final.to_atoms()):
        ref = reference(potential, atoms, "emt")
        atoms_b = slice(start, start + len(atoms))
        start += len(atoms)
        np.testing.assert_allclose(final.energy[b].numpy(), ref["energy"], rtol=RTOL)
        np.testing.assert_allclose(final.forces[atoms_b].numpy(), ref["forces"], RTOL, ATOL)


def test_unseen_element_raises_naming_the_system(potential: Potential) -> None:
    atoms_list = systems()
    atoms_list[1].symbols[0] = "Fe"
    model = MatscaleTorchSimModel(potential, head="emt")
    state = ts.io.atoms_to_state(atoms_list, model.device, model.dtype)
    with pytest.raises(DataError, match=r"record 1.*Fe \(Z=26\).*'emt'") as info:
        model(state)
    assert info.value.kind == "unknown-element"


def test_head_and_stress_choices(potential: Potential, tiny_direct_model: Path) -> None:
    with pytest.raises(DataError, match="2 heads"):
        MatscaleTorchSimModel(potential)
    with pytest.raises(DataError, match="no head named"):
        MatscaleTorchSimModel(potential, head="dft")
    direct = MatscaleTorchSimModel.from_file(tiny_direct_model, head="emt")
    assert not direct.compute_stress
    state = ts.io.atoms_to_state(systems()[:1], direct.device, direct.dtype)
    out = direct(state)
    assert set(out) == {"energy", "forces"} and out["forces"].shape == (8, 3)
    with pytest.raises(DataError, match="conservative"):
        MatscaleTorchSimModel.from_file(tiny_direct_model, head="emt", compute_stress=True)


def test_a_compiled_model_gives_the_eager_numbers(tiny_model: Path, potential: Potential) -> None:
    compiled = MatscaleTorchSimModel.from_file(tiny_model, head="emt", compile=True)
    assert compiled.potential.explicit_forces
    state = ts.io.atoms_to_state(systems(), compiled.device, torch.float64)
    out, expected = compiled(state), MatscaleTorchSimModel(potential, head="emt")(state)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], expected[key], rtol=RTOL, atol=ATOL)
