"""The shipped foundation model, as a user runs it from a fresh clone: a silicon crystal, an
oxide and a molecule, offline, with physically sensible answers (not only finite numbers)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.optimize import BFGS

from matscale import pretrained
from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.errors import DataError

NAME = "matscale-foundation-v2"
#: The teacher's (SevenNet-0, PBE-like) lattice constants (Å) of diamond Si and rocksalt MgO.
TEACHER_A = {"Si": 5.45, "MgO": 4.26}


@pytest.fixture(scope="module")
def calc() -> MatscaleCalculator:
    assert NAME in pretrained.available(), "the foundation model must ship inside the package"
    return MatscaleCalculator.pretrained(NAME)


def _lattice_minimum(make, calc: MatscaleCalculator, a0: float) -> float:
    """The lattice constant (Å) at the minimum of a parabola through energies at ±4 % around
    ``a0``, the scan moved to that minimum until it lies well inside it (a vertex beyond the
    scanned points is an extrapolation: it put v2's MgO at 4.55 Å, where the energy still
    falls towards 4.6)."""
    centre = a0
    for _ in range(4):
        lattice = centre * np.linspace(0.96, 1.04, 9)
        energies = []
        for a in lattice:
            atoms = make(a)
            atoms.calc = calc
            energies.append(atoms.get_potential_energy())
        c2, c1, _ = np.polyfit(lattice, energies, 2)
        assert c2 > 0, "no minimum: the curve bends the wrong way"
        best = float(-c1 / (2 * c2))
        if abs(best / centre - 1) < 0.02:
            return best
        centre = best
    raise AssertionError(f"no minimum within 4 scans of ±4 % from {a0} Å")


def test_the_model_it_was_trained_on_from_ships_beside_it() -> None:
    # configs/foundation-v2.yaml starts from v1 by name: the recipe needs it offline
    assert pretrained.load(NAME).info["run_config"]["train"]["init_from"] == (
        "matscale-foundation-v1"
    )
    assert "matscale-foundation-v1" in pretrained.available()


def test_the_default_head_is_the_teachers(calc: MatscaleCalculator) -> None:
    assert calc.head == "teacher-sevennet"
    assert pretrained.load(NAME).info["default_head"] == "teacher-sevennet"


@pytest.mark.parametrize(
    "name",
    [
        "Si",
        pytest.param(
            "MgO",
            # v2 puts rocksalt MgO at 4.61 Å (+8.3 %; v1 4.81, +13.0 %): 14,379 teacher
            # crystals over 84 elements (README, "The foundation model"); strict, so a model
            # that fixes it turns this into a failure that asks for the mark to go
            marks=pytest.mark.xfail(strict=True, reason="v2: MgO's lattice 8.3 % too large"),
        ),
    ],
)
def test_silicon_and_an_oxide_sit_near_the_teachers_lattice(
    calc: MatscaleCalculator, name: str
) -> None:
    def make(a: float) -> Atoms:
        return bulk(name, "diamond" if name == "Si" else "rocksalt", a=a)

    a = _lattice_minimum(make, calc, TEACHER_A[name])
    assert abs(a / TEACHER_A[name] - 1) < 0.03, a  # within 3 % of the teacher's lattice


def test_forces_and_stress_of_a_distorted_oxide_are_the_energys_derivatives(
    calc: MatscaleCalculator,
) -> None:
    atoms = bulk("MgO", "rocksalt", a=4.26, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-3
    for i, k in ((0, 0), (5, 2)):
        moved = [atoms.copy() for _ in range(2)]
        for sign, m in zip((1, -1), moved, strict=True):
            m.positions[i, k] += sign * h
            m.calc = calc
        numeric = -(moved[0].get_potential_energy() - moved[1].get_potential_energy()) / (2 * h)
        assert abs(numeric - forces[i, k]) < 2e-2 + 2e-2 * abs(forces[i, k])
    assert np.isfinite(atoms.get_stress()).all()


def test_a_molecule_relaxes_to_a_sensible_geometry_on_the_molecule_head(
    calc: MatscaleCalculator,
) -> None:
    water = molecule("H2O")
    water.positions[1] += [0.1, 0.0, 0.05]  # stretch one O–H bond
    water.calc = MatscaleCalculator.pretrained(NAME, head="xtb-main-group")
    BFGS(water, logfile=None).run(fmax=0.05, steps=200)
    bonds = [water.get_distance(0, 1), water.get_distance(0, 2)]
    assert all(0.92 < b < 1.02 for b in bonds), bonds  # GFN2-xTB: 0.96 Å
    assert 95 < water.get_angle(1, 0, 2) < 115


def test_an_element_the_default_head_never_saw_is_refused(calc: MatscaleCalculator) -> None:
    argon = bulk("Ar", "fcc", a=5.3)  # the teacher crystals leave the noble gases out
    argon.calc = calc
    with pytest.raises(DataError, match="Ar"):
        argon.get_potential_energy()
