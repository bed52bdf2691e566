from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest

from matscale.data.readers import guess_format, read_structures
from matscale.data.structure import Structure
from matscale.errors import DataError
from tests.conftest import emt_structures, mace_frames, molecules
from tests.data.formats import write_ani_h5, write_aselmdb, write_mptrj


def assert_same(got: list[Structure], want: list[Structure], *, stress: bool = True) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.numbers, w.numbers)
        np.testing.assert_allclose(g.positions, w.positions, atol=1e-6)
        np.testing.assert_allclose(g.cell, w.cell, atol=1e-6)
        np.testing.assert_array_equal(g.pbc, w.pbc)
        assert g.energy == pytest.approx(w.energy, abs=1e-6)
        np.testing.assert_allclose(g.forces, w.forces, atol=1e-6)
        if stress and w.stress is not None:
            np.testing.assert_allclose(g.stress, w.stress, atol=1e-9)


def test_extxyz_round_trip_keeps_labels_source_and_family(tmp_path: Path) -> None:
    want = emt_structures(6)
    ase.io.write(tmp_path / "a.extxyz", [s.to_atoms() for s in want])
    got = list(read_structures(tmp_path / "a.extxyz"))
    assert_same(got, want)
    assert [g.family for g in got] == [w.family for w in want]
    assert {g.source for g in got} == {"emt"}  # from atoms.info, not the file name
    assert got[3].key.endswith("a.extxyz#3")


def test_ase_db(tmp_path: Path) -> None:
    want = emt_structures(5)
    with ase.db.connect(tmp_path / "x.db") as db:
        for s in want:
            db.write(s.to_atoms())
    before = (tmp_path / "x.db").read_bytes()
    got = list(read_structures(tmp_path / "x.db", source="oc"))
    assert_same(got, want)
    # reading modifies nothing and leaves nothing beside the file (no lock file)
    assert (tmp_path / "x.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


@pytest.mark.parametrize(("content", "says"), [(b"", "empty"), (b"x" * 100, "not an SQLite")])
def test_an_ase_db_that_is_empty_or_not_sqlite_is_named_and_left_alone(
    tmp_path: Path, content: bytes, says: str
) -> None:
    # a zero-byte .db was rewritten by ASE on read (0 -> 69,632 bytes)
    path = tmp_path / "empty.db"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"empty\.db: .*{says}"):
        list(read_structures(path, source="oc"))
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_aselmdb_fairchem_layout(tmp_path: Path) -> None:
    want = emt_structures(7)
    path = tmp_path / "oc20.aselmdb"
    write_aselmdb(path, want)
    got = list(read_structures(path))
    assert_same(got, want)
    assert {g.source for g in got} == {"oc20"}
    assert guess_format(path) == "aselmdb"


def test_ani_h5_converts_hartree(tmp_path: Path) -> None:
    mols = molecules(8)
    groups = {"C1H4": mols[0::4], "H2O1": mols[1::4], "C2H6": mols[2::4], "H3N1": mols[3::4]}
    path = tmp_path / "ani1x.h5"
    write_ani_h5(path, groups)
    got = sorted(read_structures(path), key=lambda s: s.key)
    want = sorted(
        [s for confs in groups.values() for s in confs],
        key=lambda s: next(k for k, v in groups.items() if any(x is s for x in v)),
    )
    assert len(got) == 8
    by_key = {g.key.split("#")[1]: g for g in got}
    for name, confs in groups.items():
        for k, s in enumerate(confs):
            g = by_key[f"/{name}/{k}"]
            assert g.energy == pytest.approx(s.energy, rel=1e-12)  # eV again after Hartree
            np.testing.assert_allclose(g.forces, s.forces, atol=1e-9)
            assert not g.pbc.any()
    del want


def test_ani_h5_species_symbols_and_nan_energy(tmp_path: Path) -> None:
    mols = molecules(4)[0::4] * 2
    path = tmp_path / "ani.h5"
    write_ani_h5(path, {"C1H4": mols}, symbols=True)
    import h5py

    with h5py.File(path, "a") as f:
        f["C1H4/wb97x_dz.energy"][1] = np.nan
    got = list(read_structures(path))
    np.testing.assert_array_equal(got[0].numbers, mols[0].numbers)
    assert np.isnan(got[1].energy)  # passed through for the packer to skip and count


def test_mptrj_converts_stress_and_streams(tmp_path: Path, monkeypatch) -> None:
    cells = emt_structures(6)
    path = tmp_path / "MPtrj.json"
    write_mptrj(path, {"mp-1": cells[:2], "mp-22": cells[2:5], "mp-3": cells[5:]})
    import matscale.data.readers as readers

    # a tiny buffer forces the streaming parser to refill mid-value many times
    original = readers.iter_json_object
    monkeypatch.setattr(readers, "iter_json_object", lambda p: original(p, chunk=97))
    got = list(read_structures(path))
    assert_same(got, cells)
    assert got[2].key.endswith("mp-22/mp-22-0-0")
    corrected = list(read_structures(path, energy_key="corrected_total_energy"))
    assert corrected[0].energy == pytest.approx(cells[0].energy - 1.0)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("bad.extxyz", "3\nnot a comment line\nH 0 0\n", "cannot parse"),
        # ASE's bare KeyError: 'Xx' and a message-less AssertionError, said in words
        (
            "xx.extxyz",
            '2\nProperties=species:S:1:pos:R:3 pbc="F F F"\nXx 0 0 0\nH 0 0 1\n',
            r"record 0: cannot parse \(unknown element symbol 'Xx'\)",
        ),
        ("junk.cif", "garbage\n", r"cannot parse \(AssertionError in ASE's reader\)"),
        # a label that is no number names its field (it was "bad label: ...")
        (
            "e.extxyz",
            '2\nProperties=species:S:1:pos:R:3 energy=abc pbc="F F F"\nH 0 0 0\nH 0 0 1\n',
            r"record 0, field 'energy': not a number \(could not convert string to float: 'abc'\)",
        ),
        ("bad.json", '{"mp-1": {"f": {"structure": ', "truncated"),
        ("bad.json", "[1, 2]", "not a JSON object"),
        ("bad.h5", "not hdf5", "not an HDF5 file"),
        ("bad.aselmdb", "not lmdb", "LMDB"),
    ],
)
def test_malformed_files_raise_naming_the_file(tmp_path: Path, name, content, words) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=words) as info:
        list(read_structures(path))
    assert str(path) in str(info.value)


def test_mptrj_missing_field_names_record_and_field(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_mptrj(path, {"mp-1": emt_structures(2)})
    text = path.read_text().replace('"uncorrected_total_energy"', '"other"', 1)
    path.write_text(text)
    with pytest.raises(DataError) as info:
        list(read_structures(path))
    assert info.value.record == "mp-1/mp-1-0-0"
    assert info.value.field == "uncorrected_total_energy"


def test_corrupt_aselmdb_record_is_named(tmp_path: Path) -> None:
    import lmdb

    path = tmp_path / "c.aselmdb"
    write_aselmdb(path, emt_structures(3))
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"2", b"garbage")
    env.close()
    with pytest.raises(DataError, match="record 2") as info:
        list(read_structures(path))
    assert "zlib" in str(info.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        list(read_structures(tmp_path / "nope.xyz"))
    (tmp_path / "x.xyz").write_text("")
    with pytest.raises(DataError, match="unknown format"):
        list(read_structures(tmp_path / "x.xyz", format="pdbx"))


def test_ase_db_keeps_source_and_family(tmp_path: Path) -> None:
    s = emt_structures(1)[0]
    with ase.db.connect(tmp_path / "k.db") as db:
        db.write(s.to_atoms(), source="mysrc", family="bulk")
        db.write(s.to_atoms())
    got = list(read_structures(tmp_path / "k.db", source="fallback"))
    assert (got[0].source, got[0].family) == ("mysrc", "bulk")
    assert (got[1].source, got[1].family) == ("fallback", "")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            lambda g: (
                g.__delitem__("atomic_numbers"),
                g.__setitem__("species", np.array([b"C", b"Xx", b"H", b"H", b"H"])),
            ),
            "species",
        ),
        (
            lambda g: (
                g.__delitem__("wb97x_dz.energy"),
                g.__setitem__("wb97x_dz.energy", np.zeros(1)),
            ),
            "energies",
        ),
        (
            lambda g: (
                g.__delitem__("atomic_numbers"),
                g.__setitem__("atomic_numbers", np.array([6.0, 1.5, 1, 1, 1])),
            ),
            "atomic_numbers",
        ),
    ],
)
def test_ani_h5_bad_groups_are_named(tmp_path: Path, change, field) -> None:
    import h5py

    mols = molecules(4)[0::4] * 2
    path = tmp_path / "ani.h5"
    write_ani_h5(path, {"C1H4": mols})
    with h5py.File(path, "a") as f:
        change(f["C1H4"])
    with pytest.raises(DataError) as info:
        list(read_structures(path))
    assert info.value.field == field and info.value.record == "/C1H4"


def test_non_utf8_json_and_non_object_records(tmp_path: Path) -> None:
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"mp-1": {"\xe9": 1}}')
    with pytest.raises(DataError, match="not UTF-8"):
        list(read_structures(bad))
    import zlib

    import lmdb
    import orjson

    path = tmp_path / "a.aselmdb"
    write_aselmdb(path, emt_structures(1))
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"1", zlib.compress(orjson.dumps([1, 2])))
    env.close()
    with pytest.raises(DataError, match="not an object"):
        list(read_structures(path))


def test_an_ase_json_database_is_not_read_as_mptrj(tmp_path: Path) -> None:
    # `md --traj x.json` (ASE's JSON database) failed in predict and eval: every .json was
    # read as MPtrj ("record 1/calculator: bad value")
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = [s.to_atoms() for s in emt_structures(2)]
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=-1.0)
    path = tmp_path / "md.json"
    ase.io.write(path, frames)
    assert guess_format(path) == "ase"
    assert [s.energy for s in read_structures(path)] == [-1.0, -1.0]


def test_labels_under_keys_not_read_are_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MACE file read with energy_key=REF_energy alone lost its REF_forces and REF_stress
    without a word (the store then had no forces: an energy-only model was trained)."""
    from matscale.data import readers

    monkeypatch.setattr(readers, "_NOTED", set())
    path = tmp_path / "mace.extxyz"
    ase.io.write(path, mace_frames(emt_structures(2, seed=3)))
    read = list(read_structures(path, source="x", energy_key="REF_energy"))
    assert read[0].energy is not None and read[0].forces is None
    err = capsys.readouterr().err
    assert "keys ['REF_forces'] look like labels and are not read" in err
    assert "--reader-option forces_key=REF_forces" in err
    list(read_structures(path, source="x", energy_key="REF_energy"))  # once per process
    assert capsys.readouterr().err == ""
    both = list(read_structures(path, source="x", energy_key="REF_energy",
                                forces_key="REF_forces"))  # fmt: skip
    assert both[0].forces is not None and capsys.readouterr().err == ""
