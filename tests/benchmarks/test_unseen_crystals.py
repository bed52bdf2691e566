"""The unseen crystal families: real structures (bond lengths, coordination, stoichiometry),
none of them a prototype the teacher generator makes."""

from collections import Counter

import numpy as np
from ase.neighborlist import neighbor_list

from tests.benchmarks import load_benchmark

unseen = load_benchmark("unseen_crystals")

#: prototype -> (reduced formula, the first element's coordination by the last: neighbours
#: within 1.2x the shortest such distance)
EXPECTED = {
    "rutile-TiO2": ({"Ti": 1, "O": 2}, 6), "rutile-SnO2": ({"Sn": 1, "O": 2}, 6),
    "corundum-Al2O3": ({"Al": 2, "O": 3}, 6), "quartz-SiO2": ({"Si": 1, "O": 2}, 4),
    "pyrite-FeS2": ({"Fe": 1, "S": 2}, 6), "2H-MoS2": ({"Mo": 1, "S": 2}, 6),
    "NiAs": ({"Ni": 1, "As": 1}, 6), "antifluorite-Li2O": ({"Li": 2, "O": 1}, 4),
    "MgB2": ({"Mg": 1, "B": 2}, 12), "A15-Cr3Si": ({"Cr": 3, "Si": 1}, 4),
    "heusler-Cu2MnAl": ({"Cu": 2, "Mn": 1, "Al": 1}, 4), "graphite": ({"C": 1}, 3),
}  # fmt: skip


def test_every_prototype_is_the_real_crystal() -> None:
    near = {
        a.info["prototype"]: a for a in unseen.structures() if a.info["family"] == "experimental"
    }
    assert set(near) == set(EXPECTED) == set(unseen.PROTOTYPES)
    for name, atoms in near.items():
        formula, coordination = EXPECTED[name]
        counts = Counter(atoms.get_chemical_symbols())
        unit = min(counts.values()) / min(formula.values())
        assert {k: v / unit for k, v in counts.items()} == formula, name
        assert len(atoms) >= unseen.MIN_ATOMS
        i, j, d = neighbor_list("ijd", atoms, 3.5)
        assert d.min() > 1.25, name  # rattled by 0.03 Å: no broken positions
        symbols = np.array(atoms.get_chemical_symbols())
        a, b = next(iter(formula)), list(formula)[-1]
        pair = (symbols[i] == a) & (symbols[j] == b)
        bonds = Counter(i[pair & (d < 1.2 * d[pair].min())])
        first = np.flatnonzero(symbols == a)
        assert np.median([bonds[k] for k in first]) == coordination, name


def test_the_conditions_scale_the_volume() -> None:
    made = unseen.structures()
    assert len(made) == len(unseen.PROTOTYPES) * len(unseen.CONDITIONS)
    by = {(a.info["prototype"], a.info["family"]): a for a in made}
    for name in unseen.PROTOTYPES:
        v = by[(name, "experimental")].get_volume()
        assert np.isclose(by[(name, "compressed")].get_volume() / v, 0.9)
        assert np.isclose(by[(name, "expanded")].get_volume() / v, 1.08)
        assert not {"spacegroup", "unit_cell"} & set(by[(name, "hot")].info)  # P1 once rattled


def test_the_committed_labels_are_of_these_structures() -> None:
    import ase.io

    made = {(a.info["prototype"], a.info["family"]): a for a in unseen.structures()}
    committed = ase.io.read(unseen.FILE, ":")
    assert unseen.missing(committed) == ["graphite/hot"]  # a force over 50 eV/Å: left out
    for a in committed:
        twin = made[(a.info["prototype"], a.info["family"])]
        assert np.allclose(a.positions, twin.positions, atol=1e-6)
        assert a.info["labelled_by"].startswith("SevenNet-0")
        assert a.info["source"] == unseen.SOURCE != "teacher-sevennet"
        assert np.isfinite(a.get_forces()).all() and a.get_stress().shape == (6,)


def test_a_shipped_model_is_scored_with_its_own_errors_beside() -> None:
    import ase.io

    committed = ase.io.read(unseen.FILE, ":")[:4]
    row = unseen.score("matscale-foundation-v1", committed)
    assert row["atoms_per_s"] > 0
    assert 0 < row["all/forces_mae_meV_per_A"] < 5_000
    conditions = {a.info["family"] for a in committed}
    assert {f"condition:{c}/forces_mae_meV_per_A" for c in conditions} <= set(row)
    # the model's own validation and test errors on the teacher's source, from its file
    own = row["own_errors_on_teacher_source"]
    assert own["test/teacher-sevennet/forces_mae_meV_per_A"] > 0
