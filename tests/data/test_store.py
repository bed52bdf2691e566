import json
import pickle
from pathlib import Path

import ase.io
import numpy as np
import pytest

from matscale.data.info import describe
from matscale.data.pack import PackConfig, pack
from matscale.data.shard import Shard
from matscale.data.stats import SourceStats
from matscale.data.store import Store, merge_parts
from matscale.data.structure import Structure
from matscale.errors import CorruptShardError, DataError
from tests.conftest import emt_structures, molecules


def write_files(tmp_path: Path, structures: list[Structure], per_file: int) -> list[Path]:
    files = []
    for k in range(0, len(structures), per_file):
        path = tmp_path / "in" / f"part{k // per_file:03d}.extxyz"
        path.parent.mkdir(exist_ok=True)
        ase.io.write(path, [s.to_atoms() for s in structures[k : k + per_file]])
        files.append(path)
    return files


def test_round_trip_in_input_order(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=7)
    meta = pack(files, tmp_path / "st", PackConfig(workers=1, shard_mb=0.002), progress=False)
    store = Store(tmp_path / "st")
    assert len(store) == len(structures) == meta["n_structures"]
    assert len(meta["shards"]) > 3  # shards roll over at the size bound
    assert store.sources == ["emt", "mol"]
    for k, want in enumerate(structures):
        got = store[k]
        np.testing.assert_array_equal(got.numbers, want.numbers)
        np.testing.assert_allclose(got.positions, want.positions, atol=1e-5)  # float32
        np.testing.assert_allclose(got.forces, want.forces, atol=1e-5)
        assert got.energy == want.energy  # float64: exact
        assert (got.stress is None) == (want.stress is None)
        if want.stress is not None:  # Voigt order kept through float32
            np.testing.assert_allclose(got.stress, want.stress, rtol=1e-6, atol=1e-9)
        assert got.source == want.source and got.family == want.family
        assert got.key.endswith(f"#{k % 7}")
    np.testing.assert_array_equal(store.n_atoms, [s.n_atoms for s in structures])
    with pytest.raises(IndexError):
        store[len(structures)]
    # a shard's arrays are plain views of its memory map (an np.memmap's slices are memmaps,
    # whose bookkeeping doubled the time of reading a structure), and keep it open themselves
    shard = Shard(sorted((tmp_path / "st" / "shards").glob("*.msshard"))[0])
    positions = shard.arrays["positions"]
    del shard
    assert type(positions) is np.ndarray and positions.sum() != 0


def test_order_and_bytes_do_not_depend_on_workers_or_parts(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=5)
    pack(files, tmp_path / "one", PackConfig(workers=1), progress=False)
    pack(files, tmp_path / "two", PackConfig(workers=2), progress=False)
    for part in range(3):  # three "nodes" packing into one directory, then one merge
        pack(files, tmp_path / "parts", PackConfig(workers=1, part=part, n_parts=3), progress=False)
    assert not (tmp_path / "parts" / "meta.json").exists()
    merge_parts(tmp_path / "parts")
    stores = [Store(tmp_path / name) for name in ("one", "two", "parts")]
    for k in range(len(structures)):
        keys = {s[k].key for s in stores}
        assert len(keys) == 1
    for other in stores[1:]:
        # sums in another order: equal to rounding
        assert _flat(other.stats) == pytest.approx(_flat(stores[0].stats), rel=1e-9)
        np.testing.assert_array_equal(other.n_edges, stores[0].n_edges)


def _flat(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_bad_records_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    good = emt_structures(6)
    bad_forces = emt_structures(1, seed=5)[0]
    bad_forces.forces[0, 1] = np.nan
    no_forces = emt_structures(1, seed=6)[0]
    no_forces.forces = None
    close = emt_structures(1, seed=7)[0]
    close.positions[1] = close.positions[0] + [0.05, 0, 0]
    flat = emt_structures(1, seed=8)[0]
    flat.cell[2] = 0.0
    records = [*good[:3], bad_forces, no_forces, close, flat, *good[3:]]
    path = tmp_path / "mixed.extxyz"
    atoms = [s.to_atoms() for s in records]
    atoms[3].calc.results["forces"] = bad_forces.forces  # keep the NaN through the writer
    ase.io.write(path, atoms)
    meta = pack([path], tmp_path / "st", PackConfig(require=("energy", "forces")), progress=False)
    assert meta["n_structures"] == 6
    assert sum(meta["skipped"].values()) == 4
    lines = [
        json.loads(x)
        for x in (tmp_path / "st/parts").glob("*.skipped.jsonl").__next__().read_text().splitlines()
    ]
    assert [x["record"] for x in lines] == ["3", "4", "5", "6"]
    assert [x["field"] for x in lines] == ["forces", "forces", "positions", "cell"]
    assert all(x["file"] == str(path) for x in lines)


def test_corrupt_shard_is_detected_and_named(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=12)
    pack(files, tmp_path / "st", PackConfig(workers=1, shard_mb=0.004), progress=False)
    shard = sorted((tmp_path / "st/shards").iterdir())[1]
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF  # one flipped byte in the last array
    shard.write_bytes(bytes(data))
    store = Store(tmp_path / "st")
    store[0]  # the first shard is fine
    with pytest.raises(CorruptShardError, match=shard.name):
        for k in range(len(store)):
            store[k]
    errors = Store(tmp_path / "st", verify="never").check_all()
    assert [e.file for e in errors] == [str(shard)]
    with pytest.raises(CorruptShardError):
        Store(tmp_path / "st", verify="open")
    # any verb that meets it exits 3, as `data info --verify` does (training exited 2)
    from matscale.cli import _report

    assert _report(errors[0]) == 3


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["sources"].pop(), "stats"),  # was a KeyError at training
        (lambda m: m.update(cutoff_A="five"), "cutoff_A"),  # a TypeError at training
        (lambda m: m.pop("stats"), "stats"),  # a KeyError in `data info`
        (lambda m: m.update(n_structures=5), "n_structures"),  # trained on, as if 5
        (lambda m: m.update(shards=[{"file": "x"}]), "shards"),
        (lambda m: m.update(families="bulk"), "families"),
    ],
)
def test_an_edited_meta_json_is_named_with_its_field(
    tmp_path: Path, structures, edit, field: str
) -> None:
    """meta.json is not checksummed: a hand edit is refused when the store opens, naming the
    file and the field, not met later as a traceback from deep inside."""
    files = write_files(tmp_path, structures, per_file=12)
    pack(files, tmp_path / "st", PackConfig(workers=1), progress=False)
    meta = tmp_path / "st" / "meta.json"
    data = json.loads(meta.read_text())
    edit(data)
    meta.write_text(json.dumps(data))
    with pytest.raises(DataError) as caught:
        Store(tmp_path / "st")
    assert caught.value.file == str(meta) and caught.value.field == field, str(caught.value)
    assert "repack the store" in str(caught.value)


def test_a_shard_holding_a_source_meta_json_does_not_list_is_named(
    tmp_path: Path, structures
) -> None:
    files = write_files(tmp_path, structures, per_file=12)
    pack(files, tmp_path / "st", PackConfig(workers=1), progress=False)
    meta = tmp_path / "st" / "meta.json"
    data = json.loads(meta.read_text())
    data["sources"] = ["emt", "other"]
    data["stats"]["other"] = data["stats"].pop("mol")
    meta.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"holds sources or families \['mol'\] that meta.json"):
        Store(tmp_path / "st")[0]


def test_truncated_shard_header(tmp_path: Path) -> None:
    path = tmp_path / "x.msshard"
    path.write_bytes(b"MSSHARD1" + b"\xff" * 8)
    with pytest.raises(CorruptShardError, match=r"x\.msshard"):
        Shard(path)


def test_store_pickles_for_worker_processes(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=40)
    pack(files, tmp_path / "st", PackConfig(workers=1), progress=False)
    store = Store(tmp_path / "st")
    store[3]
    clone = pickle.loads(pickle.dumps(store))
    assert clone[3].key == store[3].key
    np.testing.assert_array_equal(clone.n_atoms, store.n_atoms)


def test_a_stores_meta_json_given_for_the_store_is_named(tmp_path: Path, structures) -> None:
    # `data info STORE/meta.json` said "meta.json missing"
    files = write_files(tmp_path, structures, per_file=12)
    pack(files, tmp_path / "st", PackConfig(workers=1), progress=False)
    with pytest.raises(DataError, match=r"meta\.json: is a file: give the store's folder"):
        Store(tmp_path / "st" / "meta.json")


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a matscale store"):
        Store(tmp_path)


def test_reference_energies_recover_known_values() -> None:
    rng = np.random.default_rng(0)
    e_ref = {1: -13.6, 6: -1030.0, 8: -2040.0}
    st = SourceStats()
    for _ in range(200):
        numbers = rng.choice([1, 6, 8], size=rng.integers(2, 12))
        energy = sum(e_ref[int(z)] for z in numbers) + rng.normal(0, 0.01)
        s = Structure(
            numbers=numbers,
            positions=rng.normal(size=(len(numbers), 3)) * 3,
            energy=energy,
            forces=np.ones((len(numbers), 3)),
        )
        st.add(s, n_edges=4)
    fitted = st.reference_energies()
    for z, e in e_ref.items():
        assert fitted[z] == pytest.approx(e, abs=0.01)
    summary = st.summary()
    assert summary["energy_residual_rms_eV"] == pytest.approx(0.01, rel=0.3)
    assert summary["force_rms_eV_per_A"] == pytest.approx(1.0)


def test_reference_energies_of_elements_never_apart_say_so(tmp_path: Path) -> None:
    # B and N only ever in 1:1: their sum is fixed, their split is not
    st = SourceStats()
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        numbers = np.array([5, 7] * k + [29])
        s = Structure(numbers=numbers, positions=rng.normal(size=(len(numbers), 3)) * 4,
                      energy=-10.0 * k - 3.0 + rng.normal(0, 0.01))  # fmt: skip
        st.add(s, n_edges=4)
    refs = st.reference_energies()
    assert refs[5] + refs[7] == pytest.approx(-10.0, abs=0.05)
    assert st.summary()["reference_energy_rank"] == 2  # of 3 elements
    full = SourceStats()
    full.add(Structure(numbers=np.array([5]), positions=np.zeros((1, 3)), energy=-1.0), 0)
    assert full.summary()["reference_energy_rank"] == 1
    # `matscale data info` says so: water conformers fix only 2 e_H + e_O
    water = molecules(12)[1::4]
    pack(write_files(tmp_path, water, per_file=3), tmp_path / "w", PackConfig(), progress=False)
    text = describe(Store(tmp_path / "w"))
    assert "1 of these is fixed only in combination with others" in text
    mixed = tmp_path / "m"
    (tmp_path / "mixed").mkdir()
    pack(write_files(tmp_path / "mixed", molecules(8), per_file=8), mixed, PackConfig(),
         progress=False)  # fmt: skip
    assert "fixed only in combination" not in describe(Store(mixed))


def test_statistics_of_a_packed_store(tmp_path: Path) -> None:
    mols = molecules(8)
    files = write_files(tmp_path, mols, per_file=8)
    meta = pack(files, tmp_path / "st", PackConfig(cutoff=6.0), progress=False)
    st = meta["stats"]["mol"]
    assert st["structures"] == 8
    assert st["atoms"] == sum(m.n_atoms for m in mols)
    # in a small molecule with a 6 Å cutoff every atom sees every other
    assert st["mean_neighbours"] == pytest.approx(
        sum(m.n_atoms * (m.n_atoms - 1) for m in mols) / st["atoms"]
    )


def test_shortest_distance_per_element_pair_is_the_minimum_over_all_workers(
    tmp_path: Path,
) -> None:
    mols = molecules(12)
    files = write_files(tmp_path, mols, per_file=3)
    meta = pack(files, tmp_path / "st", PackConfig(cutoff=5.0, workers=2), progress=False)
    expected: dict[str, float] = {}
    for m in mols:
        atoms = m.to_atoms()
        d = atoms.get_all_distances()
        for a in range(len(atoms)):
            for b in range(a + 1, len(atoms)):
                za, zb = sorted((int(m.numbers[a]), int(m.numbers[b])))
                key = f"{za}-{zb}"
                if d[a, b] < 5.0:
                    expected[key] = min(expected.get(key, np.inf), float(d[a, b]))
    got = meta["stats"]["mol"]["shortest_distance_A"]
    assert set(got) == set(expected)
    for key, d in expected.items():
        assert got[key] == pytest.approx(d, abs=1e-4)


def test_repacking_leaves_nothing_stale(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=9)
    pack(files, tmp_path / "st", PackConfig(workers=2), progress=False)
    meta = pack(files[:1], tmp_path / "st", PackConfig(workers=1), progress=False, overwrite=True)
    assert meta["n_structures"] == 9 == len(Store(tmp_path / "st"))


def test_merge_refuses_missing_or_foreign_parts(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=9)
    pack(files, tmp_path / "st", PackConfig(workers=1, part=0, n_parts=2), progress=False)
    with pytest.raises(DataError, match=r"parts \[1\] of 2 are not packed yet"):
        merge_parts(tmp_path / "st")
    pack(files[:2], tmp_path / "st", PackConfig(workers=1, part=1, n_parts=2), progress=False)
    with pytest.raises(DataError, match="different packing runs"):
        merge_parts(tmp_path / "st")


def test_merge_refuses_parts_that_kept_records_by_other_settings(
    tmp_path: Path, structures
) -> None:
    # parts packed with --max-force 0.5 and the default merged into one store without a word
    files = write_files(tmp_path, structures, per_file=9)
    pack(files, tmp_path / "st", PackConfig(workers=1, part=0, n_parts=2, max_force=0.5),
         progress=False)  # fmt: skip
    pack(files, tmp_path / "st", PackConfig(workers=1, part=1, n_parts=2), progress=False)
    with pytest.raises(DataError, match=r"different --require or --max-force .*0\.5.*100\.0"):
        merge_parts(tmp_path / "st")
    # the settings are recorded in the store
    meta = pack(files, tmp_path / "one", PackConfig(workers=1, require=("forces", "energy")),
                progress=False)  # fmt: skip
    assert meta["filters"] == {"require": ["energy", "forces"], "max_force_eV_per_A": 100.0}


def test_more_parts_than_files_merge(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=40)
    for part in range(3):
        pack(files, tmp_path / "st", PackConfig(workers=1, part=part, n_parts=3), progress=False)
    assert merge_parts(tmp_path / "st")["n_structures"] == len(structures)


def test_skips_are_counted_by_kind(tmp_path: Path) -> None:
    records = emt_structures(5)
    for k, gap in enumerate((0.01, 0.02, 0.03)):
        records[k].positions[1] = records[k].positions[0] + [gap, 0, 0]
    path = tmp_path / "close.extxyz"
    ase.io.write(path, [s.to_atoms() for s in records])
    meta = pack([path], tmp_path / "st", PackConfig(), progress=False)
    assert meta["skipped"] == {"positions: too-close": 3}


def test_missing_index_and_shard_are_named(tmp_path: Path, structures) -> None:
    files = write_files(tmp_path, structures, per_file=40)
    pack(files, tmp_path / "st", PackConfig(workers=1), progress=False)
    shard = next((tmp_path / "st/shards").iterdir())
    shard.rename(tmp_path / "elsewhere")
    assert [e.reason for e in Store(tmp_path / "st").check_all()] == [
        "shard listed in meta.json is missing"
    ]
    (tmp_path / "st/index/n_edges.npy").unlink()
    with pytest.raises(DataError, match=r"n_edges\.npy"):
        Store(tmp_path / "st")


def test_pack_config_is_checked() -> None:
    with pytest.raises(DataError, match="unknown labels"):
        PackConfig(require=("energy", "force"))
    with pytest.raises(DataError, match=r"part 2 is not in 0\.\.1"):
        PackConfig(part=2, n_parts=2)


def test_repeated_structures_are_counted_and_said(tmp_path: Path, structures, capsys) -> None:
    # the same file packed twice (or a .db beside the extxyz it came from) stored every
    # structure twice without a word: the split then put twins in training and test
    import shutil

    from matscale.data.store import repeats_note

    files = write_files(tmp_path, structures, per_file=len(structures))
    meta = pack(files, tmp_path / "once", PackConfig(workers=1), progress=False)
    assert meta["repeated_structures"] == 0 and repeats_note(meta) == ""
    copy = tmp_path / "copy.extxyz"
    shutil.copy(files[0], copy)
    # across parts too: each packer's fingerprints are compared at the merge
    for part in range(2):
        pack([files[0], copy], tmp_path / "twice", PackConfig(workers=1, part=part, n_parts=2),
             progress=False)  # fmt: skip
    meta = merge_parts(tmp_path / "twice")
    assert meta["repeated_structures"] == len(structures)
    assert f"{len(structures):,} of the {2 * len(structures):,} structures repeat" in (
        repeats_note(meta)
    )
    pack([files[0], copy], tmp_path / "said", PackConfig(workers=1), progress=True)
    assert "structures repeat another one" in capsys.readouterr().out
    assert "structures repeat another one" in describe(Store(tmp_path / "said"))  # data info


def test_repeats_are_counted_per_source_and_across_combined_stores(tmp_path: Path) -> None:
    # the same geometries relabelled under another source (a teacher's) are two labellings,
    # not repeats; a store combined with another that holds the same structures of the same
    # source repeats them (combine carries the fingerprints)
    from dataclasses import replace

    from matscale.data.combine import combine_stores

    for folder in ("both", "first", "again"):
        (tmp_path / folder).mkdir()
    cells = emt_structures(6)
    teacher = [replace(s, source="teacher") for s in cells]
    both = write_files(tmp_path / "both", cells + teacher, per_file=12)
    meta = pack(both, tmp_path / "relabelled", PackConfig(workers=1), progress=False)
    assert meta["n_structures"] == 12 and meta["repeated_structures"] == 0
    first = write_files(tmp_path / "first", cells, per_file=6)
    again = write_files(tmp_path / "again", cells[:4] + emt_structures(3, seed=7), per_file=7)
    pack(first, tmp_path / "a", PackConfig(workers=1), progress=False)
    pack(again, tmp_path / "b", PackConfig(workers=1), progress=False)
    union = combine_stores([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    assert union.meta["repeated_structures"] == 4
    assert "4 of the 13 structures repeat another one of their source" in describe(union)
