"""Packing never loses a user's files: failed packs, odd names, wrong destinations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest

from matscale.cli import main
from matscale.data.pack import PackConfig, pack
from matscale.data.store import Store
from matscale.errors import DataError
from tests.conftest import emt_structures, mace_frames, small_files


def _write(path: Path, n: int = 6, seed: int = 0) -> Path:
    ase.io.write(path, [s.to_atoms() for s in emt_structures(n, seed=seed)])
    return path


def test_a_failed_overwrite_leaves_the_old_store_as_it_was(tmp_path: Path) -> None:
    # `data pack --overwrite` deleted the old store before the new one existed: a pack that
    # then failed left no store at all
    good = _write(tmp_path / "good.extxyz")
    pack([good], tmp_path / "store", PackConfig(workers=1), progress=False)
    before = Store(tmp_path / "store")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_bytes(b"\x00\x01 this is not a structure file\n" * 10)
    with pytest.raises(DataError, match=r"garbage\.extxyz"):
        pack([garbage], tmp_path / "store", PackConfig(workers=1), progress=False, overwrite=True)
    after = Store(tmp_path / "store")
    assert len(after) == len(before) and after.content_id == before.content_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.extxyz", "good.extxyz", "store"]
    # a successful overwrite replaces it
    more = _write(tmp_path / "more.extxyz", n=9, seed=1)
    pack([more], tmp_path / "store", PackConfig(workers=1), progress=False, overwrite=True)
    assert len(Store(tmp_path / "store")) == 9


def test_an_existing_store_is_replaced_only_when_asked(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.extxyz")
    pack([good], tmp_path / "store", PackConfig(workers=1), progress=False)
    with pytest.raises(DataError, match="already exists"):
        pack([good], tmp_path / "store", PackConfig(workers=1), progress=False)


def test_a_destination_that_is_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    # `pack --out FILE` gave a NotADirectoryError traceback
    good = _write(tmp_path / "good.extxyz")
    (tmp_path / "afile").write_text("mine")
    assert main(["data", "pack", str(good), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "afile" in err and "is a file" in err and "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_file_name_that_is_not_utf8_packs(tmp_path: Path) -> None:
    # such a name crashed pack with a UnicodeEncodeError
    name = os.fsdecode(b"caf\xe9-latin1.extxyz")  # Latin-1 bytes: not UTF-8
    path = _write(tmp_path / name)
    out = subprocess.run(
        [sys.executable, "-m", "matscale", "data", "pack", str(path), "--out",
         str(tmp_path / "store"), "--workers", "1"],
        capture_output=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    assert len(Store(tmp_path / "store")) == 6


def test_a_reader_that_leaves_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    # `data info STORE | head` and `data pack ... | head` died with a BrokenPipeError
    good = _write(tmp_path / "good.extxyz")
    pack([good], tmp_path / "store", PackConfig(workers=1), progress=False)
    for args in (
        ["data", "info", str(tmp_path / "store")],
        ["data", "pack", str(good), "--out", str(tmp_path / "store2"), "--workers", "1"],
    ):
        proc = subprocess.run(
            f"{sys.executable} -m matscale {' '.join(args)} | head -c 1",
            shell=True,
            capture_output=True,
            text=True,
            executable="/bin/bash",
        )
        assert proc.returncode == 0
        assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_an_edited_index_array_fails_verification(tmp_path: Path, capsys) -> None:
    # an edited index/*.npy passed `info --verify`
    import numpy as np

    good = _write(tmp_path / "good.extxyz")
    pack([good], tmp_path / "store", PackConfig(workers=1), progress=False)
    assert main(["data", "info", "--verify", str(tmp_path / "store")]) == 0
    path = tmp_path / "store" / "index" / "n_atoms.npy"
    counts = np.load(path)
    counts[0] += 1  # a well-formed array that batches wrongly
    np.save(path, counts)
    assert main(["data", "info", "--verify", str(tmp_path / "store")]) == 3
    assert "n_atoms.npy: index array missing or changed" in capsys.readouterr().err
    assert main(["data", "merge", str(tmp_path / "store")]) == 0  # what the error says to do
    assert main(["data", "info", "--verify", str(tmp_path / "store")]) == 0


def test_a_pack_that_runs_out_of_space_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    # `data pack` on a full disk gave an `OSError: No space left on device` traceback
    good = _write(tmp_path / "good.extxyz", n=40)
    proc = subprocess.run(
        [sys.executable, "-m", "matscale", "data", "pack", str(good), "--out",
         str(tmp_path / "store"), "--workers", "1"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("matscale: error: ") and len(proc.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.extxyz"]  # no half store


def test_records_labelled_by_a_model_say_so_after_packing(tmp_path: Path, capsys) -> None:
    # data labelled by a teacher says so in every record: the extxyz record, the store's
    # metadata and statistics, every structure read back, and its content id
    teacher = "SevenNet-0 (sevenn 0.13.0)"
    taught = emt_structures(4, seed=2, source="taught")
    for s in taught:
        s.labelled_by = teacher
    files = [_write(tmp_path / "emt.extxyz"), tmp_path / "taught.extxyz"]
    ase.io.write(files[1], [s.to_atoms() for s in taught])
    assert "labelled_by" in files[1].read_text()
    meta = pack(files, tmp_path / "store", PackConfig(workers=2), progress=False)
    assert meta["labelled_by"] == {"taught": teacher}  # the calculator-labelled source: absent
    store = Store(tmp_path / "store")
    assert {store[i].source: store[i].labelled_by for i in range(len(store))} == {
        "emt": "",
        "taught": teacher,
    }
    assert main(["data", "info", str(tmp_path / "store")]) == 0
    assert f"taught: {teacher}" in capsys.readouterr().out
    # ... and so does a model trained on them: its file and its card, head by head
    from matscale.calc.model_file import read_model_file
    from tests.calc.conftest import train_tiny

    model = train_tiny(tmp_path / "store", tmp_path / "runs", "data.split=[0.6,0.2,0.2]")
    assert read_model_file(model)["labelled_by"] == {"taught": teacher}
    card = model.with_suffix(".md").read_text()
    assert f"| taught | {teacher}, a model (teacher) |" in card
    assert "| emt | its source's calculator |" in card
    # the same structures without the label are other data
    plain = tmp_path / "plain"
    plain.mkdir()
    _write(plain / "emt.extxyz")
    for s in taught:
        s.labelled_by = ""
    ase.io.write(plain / "taught.extxyz", [s.to_atoms() for s in taught])
    pack(sorted(plain.iterdir()), tmp_path / "plain-store", PackConfig(workers=1), progress=False)
    assert Store(tmp_path / "plain-store").content_id != store.content_id


def test_a_source_labelled_by_two_models_is_refused_naming_the_record(tmp_path: Path) -> None:
    mixed = emt_structures(3, seed=4, source="mixed")
    mixed[0].labelled_by = "SevenNet-0 (sevenn 0.13.0)"
    mixed[2].labelled_by = "CHGNet 0.3.0 (chgnet 0.4.2)"
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [s.to_atoms() for s in mixed])
    with pytest.raises(DataError, match=r"mixed\.extxyz.*record 1.*labelled_by") as err:
        pack([path], tmp_path / "store", PackConfig(workers=1), progress=False)
    assert "one level of theory" in str(err.value)
    assert not (tmp_path / "store").exists()


def test_a_folder_reads_poscars_and_compressed_files_and_names_what_it_skips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # POSCAR and x.extxyz.gz were dropped from a folder without a word (given alone, they read)
    import gzip
    import shutil

    from matscale.data.pack import collect_inputs

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    atoms = [s.to_atoms() for s in emt_structures(3)]
    ase.io.write(folder / "a.extxyz", atoms)
    ase.io.write(folder / "POSCAR", atoms[0], format="vasp")
    ase.io.write(folder / "sub" / "CONTCAR", atoms[1], format="vasp")
    ase.io.write(folder / "b.extxyz", atoms)
    with open(folder / "b.extxyz", "rb") as src, gzip.open(folder / "b.extxyz.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (folder / "b.extxyz").unlink()
    (folder / "notes.txt").write_text("not a structure")
    (folder / ".DS_Store").write_text("")
    (folder / "generate.json").write_text("{}")  # bookkeeping: skipped without a note
    files, _ = collect_inputs([folder])
    assert sorted(f.name for f in files) == ["CONTCAR", "POSCAR", "a.extxyz", "b.extxyz.gz"]
    err = capsys.readouterr().err
    assert "1 file(s) not read, no structure format by their names: notes.txt" in err
    meta = pack(files, tmp_path / "store", PackConfig(workers=1, require=()), progress=False)
    assert meta["n_structures"] == 3 + 1 + 1 + 3  # every file read


def test_labels_under_other_keys_are_read_by_naming_the_keys(tmp_path: Path, capsys) -> None:
    """MACE's extxyz keeps labels as REF_energy, REF_forces, REF_stress: packing them said
    only that every energy was missing, and the ase reader took no option to name them."""
    structures = emt_structures(6, seed=3)
    frames = mace_frames(structures, stress=True)  # the labels only under MACE's keys
    ref = tmp_path / "ref.extxyz"
    ase.io.write(ref, frames, format="extxyz")
    assert main(["data", "pack", str(ref), "--out", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err
    assert "energy: missing" in err and "--reader-option energy_key=KEY" in err
    options = ["energy_key=REF_energy", "forces_key=REF_forces", "stress_key=REF_stress"]
    args = ["data", "pack", str(ref), "--out", str(tmp_path / "ref-store")]
    assert main([*args, *(x for o in options for x in ("--reader-option", o))]) == 0
    store = Store(tmp_path / "ref-store")
    assert len(store) == 6
    got = sorted((store[i] for i in range(6)), key=lambda s: float(s.energy))
    want = sorted(structures, key=lambda s: float(s.energy))
    for a, b in zip(got, want, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        assert a.forces == pytest.approx(b.forces, abs=1e-6)
        assert a.stress == pytest.approx(b.stress, abs=1e-6)


def test_pack_warns_of_other_units_and_rare_elements_and_names_a_skipped_record(
    tmp_path: Path, capsys
) -> None:
    """Energies and forces in kcal/mol packed without a word (force RMS 19.5 eV/Å), one Xe
    atom in one record made Xe an element of the head, and the console only counted the
    skipped records."""
    structures = emt_structures(30, seed=4)
    kcal = []
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc.results["energy"] *= 23.06  # kcal/mol
        atoms.calc.results["forces"] = atoms.calc.results["forces"] * 23.06 * 20
        kcal.append(atoms)
    odd = structures[0].to_atoms()
    odd.numbers[0] = 54  # one Xe atom
    bad = structures[1].to_atoms()
    bad.calc.results["forces"][2, 1] = float("nan")
    path = tmp_path / "kcal.extxyz"
    ase.io.write(path, [*kcal, odd, bad])
    assert main(["data", "pack", str(path), "--out", str(tmp_path / "s"), "--max-force", "0"]) == 0
    said = capsys.readouterr()
    assert "force RMS" in said.err and "kcal/mol/Å is 23x" in said.err
    assert "Xe (1 atoms): too few to learn from" in said.err
    assert "the first: file" in said.out and "record 31" in said.out and "forces" in said.out
    # data info says the same; a store of ordinary data says nothing of the kind
    from matscale.data.info import describe, warnings_about

    assert "warning: source 'emt': force RMS" in describe(Store(tmp_path / "s"))
    clean = _write(tmp_path / "clean.extxyz", n=30)
    pack([clean], tmp_path / "clean", PackConfig(workers=1), progress=False)
    assert warnings_about(Store(tmp_path / "clean").stats) == []
