"""The teacher sources: prototypes across the periodic table, labelled by a universal potential
that every record names."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list

from matscale.data.generate import teacher
from matscale.data.generate.run import GenerateConfig, generate


def _nearest(atoms) -> float:
    return float(neighbor_list("d", atoms, 6.0).min())


def test_the_elements_span_the_periodic_table() -> None:
    assert len(teacher.ELEMENTS) >= 80
    assert {"H", "Li", "C", "O", "Si", "S", "Fe", "Cu", "Ag", "W", "Au", "Bi", "U"} <= set(
        teacher.ELEMENTS
    )
    assert not {"He", "Ne", "Ar", "Kr", "Xe"} & set(teacher.ELEMENTS)
    for names in (teacher.ANIONS, teacher.A_SITE, teacher.B_SITE, teacher.METALS):
        assert set(names) <= set(teacher.ELEMENTS)


@pytest.mark.parametrize("lattice", ["fcc", "bcc", "hcp", "diamond", "sc"])
def test_every_element_builds_with_its_nearest_neighbours_at_the_guess(lattice: str) -> None:
    for x in teacher.ELEMENTS:
        atoms = teacher.elemental(x, lattice, 2.5)
        assert _nearest(atoms) == pytest.approx(2.5, rel=1e-6), (x, lattice)


@pytest.mark.parametrize(
    "lattice", ["rocksalt", "zincblende", "wurtzite", "fluorite", "cesiumchloride"]
)
def test_binaries_have_their_nearest_neighbours_at_the_radius_sum(lattice: str) -> None:
    atoms = teacher.binary("Mg", "O", lattice, 2.1)
    assert _nearest(atoms) == pytest.approx(2.1, rel=0.02)
    assert set(atoms.get_chemical_symbols()) == {"Mg", "O"}


def test_ternaries_have_their_formula_and_no_short_contacts() -> None:
    p = teacher.perovskite("Sr", "Ti", "O")
    assert sorted(Counter(p.get_chemical_symbols()).items()) == [("O", 3), ("Sr", 1), ("Ti", 1)]
    s = teacher.spinel("Mg", "Al", "O")
    assert sorted(Counter(s.get_chemical_symbols()).items()) == [("Al", 4), ("Mg", 2), ("O", 8)]
    for atoms, bond in ((p, ("Ti", "O")), (s, ("Al", "O"))):
        radius_sum = sum(teacher.covalent_radii[atomic_numbers[e]] for e in bond)
        assert _nearest(atoms) > 0.8 * radius_sum


def test_supercells_hold_8_to_32_atoms() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        cell = teacher.prototype(rng)
        n = len(teacher.supercell(cell, rng))
        assert 8 <= n <= 32 or (n == len(cell) > 32), n


def test_a_missing_teacher_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "chgnet" else real(name, *a)
    )
    with pytest.raises(ValueError, match=r"teacher-chgnet.*chgnet.*\.\[teachers\]"):
        generate(tmp_path, GenerateConfig(sizes={"teacher-chgnet": 3}), progress=False)
    assert not (tmp_path / "teacher-chgnet").exists()


def test_sevennet_labels_say_so_and_are_the_teachers_own(tmp_path: Path) -> None:
    pytest.importorskip("sevenn")
    from ase.calculators.singlepoint import SinglePointCalculator

    made = teacher.make(teacher.SEVENNET, 6, np.random.default_rng(3), skipped := Counter())
    assert len(made) + sum(skipped.values()) == 6 and len(made) >= 4
    again = teacher.make(teacher.SEVENNET, 6, np.random.default_rng(3), Counter())
    calc = teacher.calculator(teacher.SEVENNET)
    for s, t in zip(made, again, strict=True):  # seeded: the same structures and labels
        # (to float32 round-off: the teacher's sums need not run in the same order twice)
        np.testing.assert_allclose(s.positions, t.positions, atol=1e-5)
        assert s.energy == pytest.approx(t.energy, abs=1e-4)
        assert s.labelled_by.startswith("SevenNet-0 (sevenn 0.13")
        assert s.source == "teacher-sevennet"
        assert (s.stress is None) == (s.family == "surface")
        atoms = s.to_atoms()
        atoms.calc = calc  # the label is what the teacher says of this very structure
        assert atoms.get_potential_energy() == pytest.approx(s.energy, abs=1e-4)
        np.testing.assert_allclose(atoms.get_forces(), s.forces, atol=1e-4)
        assert isinstance(s.to_atoms().calc, SinglePointCalculator)


def test_the_teacher_finds_the_equilibrium_volume_of_copper() -> None:
    pytest.importorskip("sevenn")
    guess = teacher.elemental("Cu", "fcc", 2 * teacher._radius("Cu"))  # 2.64 Å: 3 % too long
    cell = teacher.relaxed(guess, teacher.calculator(teacher.SEVENNET))
    # PBE's fcc Cu: a = 3.63-3.64 Å, nearest neighbours 2.57 Å (the scan's step is 1.5 %)
    assert _nearest(cell) == pytest.approx(2.57, rel=0.02)


class _Curve:
    """A stand-in teacher whose energy depends on the lattice scale s = (V / V_guess)^(1/3)
    only: ``energy(s)``."""

    def __init__(self, guess_volume: float, energy) -> None:
        self.v0, self.energy = guess_volume, energy

    def get_potential_energy(self, atoms) -> float:
        return float(self.energy((atoms.get_volume() / self.v0) ** (1 / 3)))


def _relax_with(energy) -> tuple[float, bool]:
    from unittest.mock import patch

    guess = teacher.elemental("Cu", "fcc", 2.6)
    curve = _Curve(guess.get_volume(), energy)
    with patch.object(teacher, "_energy", lambda atoms, calc: curve.get_potential_energy(atoms)):
        cell = teacher.relaxed(guess, curve)
    scale = (cell.get_volume() / guess.get_volume()) ** (1 / 3)
    return scale, bool(cell.info["no_minimum"])


def test_the_scan_follows_a_minimum_beyond_its_window_and_refuses_a_collapse() -> None:
    assert _relax_with(lambda s: (s - 1.02) ** 2) == (pytest.approx(1.02, abs=0.01), False)
    # a guess 35 % too tight (covalent radii of metals): the scan moves outwards to it
    assert _relax_with(lambda s: (s - 1.35) ** 2) == (pytest.approx(1.35, abs=0.015), False)
    # tighter binding than the guess (low-coordination prototypes), within the floor
    assert _relax_with(lambda s: (s - 0.7) ** 2) == (pytest.approx(0.7, abs=0.015), False)
    # energy falling without end as the cell shrinks (a teacher's hole): stopped at the floor
    scale, no_minimum = _relax_with(lambda s: s)
    assert no_minimum and scale == pytest.approx(teacher.SCALE_FLOOR)
    # a plateau (constant energy; atoms beyond the teacher's reach) and a curve falling
    # outwards without end are no minimum either
    assert _relax_with(lambda s: 0.0)[1]
    assert _relax_with(lambda s: -s) == (pytest.approx(teacher.SCALE_CEILING), True)
    assert _relax_with(lambda s: max(0.0, 1.4 - s))[1]  # repulsive, then flat from 1.4
    cell = teacher.elemental("Cu", "fcc", 2.6)
    cell.info["no_minimum"] = True
    assert teacher._refused(cell) == teacher.NO_MINIMUM
    dense = teacher.elemental("H", "fcc", 0.62)  # H at its covalent bond length: 1.6 atoms/Å³
    dense.info["no_minimum"] = False
    assert teacher._refused(dense) == teacher.TOO_DENSE


def test_a_teacher_that_never_binds_stops_generation_with_one_error(monkeypatch) -> None:
    monkeypatch.setattr(teacher, "calculator", lambda t: None)
    monkeypatch.setattr(teacher, "_energy", lambda atoms, calc: float("nan"))  # a broken install
    with pytest.raises(RuntimeError, match=r"100 prototypes in a row refused.*SevenNet-0"):
        teacher.make(teacher.SEVENNET, 5, np.random.default_rng(0), Counter())


def test_generate_and_pack_a_teacher_source(tmp_path: Path) -> None:
    pytest.importorskip("sevenn")
    from matscale.data.pack import PackConfig, collect_inputs, pack
    from matscale.data.store import Store

    report = generate(
        tmp_path / "raw",
        GenerateConfig(sizes={"teacher-sevennet": 5}, workers=1),
        progress=False,
    )
    assert (
        report["written_now"]["teacher-sevennet"]
        + sum(report["skipped_now"]["teacher-sevennet"].values())
        == 5
    )
    files, sources = collect_inputs([tmp_path / "raw" / "teacher-sevennet"])
    pack(files, tmp_path / "store", PackConfig(workers=1), sources=sources, progress=False)
    store = Store(tmp_path / "store")
    assert store.labelled_by["teacher-sevennet"].startswith("SevenNet-0 (sevenn")
    assert all(
        store[i].labelled_by == store.labelled_by["teacher-sevennet"] for i in range(len(store))
    )


def test_every_prototype_brings_its_equation_of_state() -> None:
    pytest.importorskip("sevenn")
    made = teacher.make(teacher.SEVENNET, 12, np.random.default_rng(5), Counter())
    eos = [s for s in made if s.family == "eos"]
    # the first prototype's five volumes come first, before its other structures
    assert [s.family for s in made[: len(teacher.EOS_VOLUMES)]] == ["eos"] * 5
    first = eos[: len(teacher.EOS_VOLUMES)]
    volumes = np.array([abs(np.linalg.det(s.cell)) for s in first])
    np.testing.assert_allclose(volumes / volumes[2], teacher.EOS_VOLUMES, rtol=1e-5)
    assert len({s.numbers.tobytes() for s in first}) == 1
    for s in eos:
        assert s.stress is not None and s.labelled_by.startswith("SevenNet-0")
    # compressed cells push outwards: the pressure −(σxx + σyy + σzz)/3 (eV/Å³, Voigt) falls
    # as the volume grows
    pressure = [-float(np.sum(s.stress[:3])) / 3 for s in first]
    assert pressure[0] > pressure[-1]


def test_eos_cells_are_the_relaxed_cell_scaled_and_unrattled() -> None:
    cell = teacher.elemental("Cu", "fcc", 2.55)
    cell.info["no_minimum"] = False
    for v, atoms in zip(teacher.EOS_VOLUMES, teacher.eos(cell), strict=True):
        assert atoms.get_volume() == pytest.approx(v * cell.get_volume(), rel=1e-9)
        np.testing.assert_allclose(atoms.get_scaled_positions(), cell.get_scaled_positions())
        assert atoms.info == {"family": "eos"}


def test_chgnet_is_the_second_teacher() -> None:
    pytest.importorskip("chgnet")
    made = teacher.make(teacher.CHGNET, 2, np.random.default_rng(1), Counter())
    assert made and all(s.labelled_by.startswith("CHGNet 0.3.0 (chgnet 0.4") for s in made)
    assert all(s.source == "teacher-chgnet" and np.isfinite(s.forces).all() for s in made)
