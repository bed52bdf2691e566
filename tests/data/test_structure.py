import numpy as np
import pytest

from matscale.data.structure import (
    Structure,
    check_structure,
    min_distance,
    stress_to_voigt,
    voigt_to_matrix,
)
from matscale.errors import DataError
from tests.conftest import emt_structures


def _ok() -> Structure:
    return emt_structures(1)[0]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: setattr(s, "forces", np.full_like(s.forces, np.nan)), "forces", "NaN"),
        (lambda s: setattr(s, "energy", float("inf")), "energy", "inf"),
        (lambda s: setattr(s, "positions", s.positions[:, :2]), "positions", "shape"),
        (lambda s: setattr(s, "numbers", s.numbers * 0), "numbers", "1..118"),
        (lambda s: setattr(s, "cell", np.zeros((3, 3))), "cell", "zero volume"),
        (  # volume 1.3e-6 Å³ passes the volume test; images 1e-7 Å apart would hang vesin
            lambda s: setattr(s, "cell", np.array([[3.6, 0, 0], [3.6, 1e-7, 0], [0, 0, 3.6]])),
            "cell",
            "degenerate",
        ),
        (lambda s: s.positions.__setitem__(1, s.positions[0] + 0.05), "positions", "apart"),
        (lambda s: setattr(s, "stress", np.ones(5)), "stress", "shape"),
    ],
)
def test_bad_records_name_file_record_and_field(change, field, words) -> None:
    s = _ok()
    change(s)
    with pytest.raises(DataError) as info:
        check_structure(s, file="in.xyz", record=7)
    assert info.value.field == field
    assert words in str(info.value)
    assert str(info.value).startswith("in.xyz, record 7, field")


def test_missing_required_label() -> None:
    s = _ok()
    s.forces = None
    check_structure(s)  # fine when forces are not asked for
    with pytest.raises(DataError, match="forces required"):
        check_structure(s, require=("energy", "forces"))


def test_close_periodic_image_is_caught() -> None:
    # one atom in a 0.05 Å periodic cell is 0.05 Å from its own image
    s = Structure(
        numbers=np.array([1]),
        positions=np.zeros((1, 3)),
        cell=np.eye(3) * 0.05,
        pbc=np.array([True, True, True]),
    )
    assert min_distance(s) == pytest.approx(0.05)
    with pytest.raises(DataError, match="apart"):
        check_structure(s)


def test_max_force() -> None:
    s = _ok()
    s.forces[0, 0] = 150.0
    check_structure(s)
    with pytest.raises(DataError, match="exceeds 100"):
        check_structure(s, max_force=100.0)


def test_stress_conventions_round_trip() -> None:
    m = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    v = stress_to_voigt(m)
    np.testing.assert_array_equal(v, [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(voigt_to_matrix(v), m)


def test_to_atoms_keeps_labels() -> None:
    s = _ok()
    atoms = s.to_atoms()
    assert atoms.get_potential_energy() == pytest.approx(s.energy)
    np.testing.assert_allclose(atoms.get_forces(), s.forces)
    np.testing.assert_allclose(atoms.get_stress(), s.stress)
    assert atoms.info["source"] == s.source


def test_data_error_keeps_its_location_across_processes() -> None:
    import pickle

    from matscale.errors import CorruptShardError

    for cls in (DataError, CorruptShardError):
        err = pickle.loads(pickle.dumps(cls("bad", file="f.xyz", record=3, field="cell")))
        assert type(err) is cls
        assert (err.file, err.record, err.field, err.reason) == ("f.xyz", 3, "cell", "bad")
        assert str(err) == "f.xyz, record 3, field 'cell': bad"


def test_cell_problems_carry_the_reason_pack_counts() -> None:
    """One set of cell checks for training data and inference: each problem with its reason
    code, and none for cells that are fine (a slab's third row may be zero)."""
    from matscale.data.structure import cell_problem

    fcc = np.diag([3.6, 3.6, 3.6])
    assert cell_problem(fcc, np.ones(3, bool)) is None
    assert cell_problem(np.diag([3.6, 3.6, 0.0]), np.array([True, True, False])) is None
    assert cell_problem(np.zeros((3, 3)), np.zeros(3, bool)) is None  # a molecule
    assert cell_problem(np.zeros((3, 3)), np.ones(3, bool))[1] == "zero-volume"
    slab = np.array([[3.6, 0, 0], [0, 0, 0], [0, 0, 0]])
    message, reason = cell_problem(slab, np.array([True, True, False]))
    assert reason == "zero-vector" and "periodic along xy" in message
    sheared = np.array([[3.6, 0, 0], [3.6, 1e-7, 0], [0, 0, 3.6]])  # volume 1.3e-6 Å³
    message, reason = cell_problem(sheared, np.ones(3, bool))
    assert reason == "degenerate" and "along its x lattice vector" in message
