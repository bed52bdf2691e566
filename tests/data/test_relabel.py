"""``matscale data label``: structures one has, labelled by a teacher, say so; resumable."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from matscale.cli import main
from matscale.data.generate import teacher
from matscale.data.generate.relabel import OUTSIDE, label_files
from matscale.data.pack import PackConfig, collect_inputs, pack
from matscale.data.readers import read_structures
from matscale.data.store import Store
from matscale.errors import DataError

#: EMT standing in for a universal potential: labels to check against, in milliseconds.
EMT_TEACHER = teacher.Teacher(source="teacher-emt", name="EMT", package="ase", make=EMT)


def _inputs(path: Path) -> list[Atoms]:
    """Six structures: labelled bulk (stress) and slab (none), unlabelled bulk and molecule,
    an element EMT lacks (Fe: the teacher fails) and one outside every teacher's table (Fm)."""
    rng = np.random.default_rng(0)
    cu = bulk("Cu", "fcc", a=3.6).repeat(2)
    cu.positions += rng.normal(0, 0.05, cu.positions.shape)
    cu.calc = SinglePointCalculator(cu, energy=1.0, forces=np.zeros((8, 3)), stress=np.zeros(6))
    cu.info.update(source="emt-metals", family="bulk")
    slab = fcc111("Au", (2, 2, 2), vacuum=6.0)
    del slab.info["adsorbate_info"]
    slab.calc = SinglePointCalculator(slab, energy=2.0, forces=np.zeros((8, 3)))
    slab.info.update(source="emt-metals", family="surface")
    bare = bulk("Pd", "fcc", a=3.9).repeat(2)
    molecule = Atoms("Cu3", positions=[[0, 0, 0], [2.4, 0, 0], [1.2, 2.0, 0]])
    iron = bulk("Fe", "bcc", a=2.87).repeat(2)
    fermium = Atoms("CuFm", positions=[[0, 0, 0], [2.6, 0, 0]])
    structures = [cu, slab, bare, molecule, iron, fermium]
    ase.io.write(path, structures, format="extxyz")
    return structures


def test_labels_are_the_teachers_and_say_so(tmp_path: Path) -> None:
    structures = _inputs(tmp_path / "in.extxyz")
    report = label_files([tmp_path / "in.extxyz"], tmp_path / "out", EMT_TEACHER, chunk=4,
                         workers=1, progress=False)  # fmt: skip
    assert report["written_now"] == 4 and report["structures"] == 6 and report["chunks"] == 2
    assert report["skipped_now"] == {"teacher failed": 1, OUTSIDE: 1}
    files = sorted((tmp_path / "out" / "teacher-emt").glob("chunk-*.extxyz"))
    assert [f.name for f in files] == ["chunk-00000.extxyz", "chunk-00001.extxyz"]
    got = [s for f in files for s in read_structures(f)]
    assert len(got) == 4
    for s, atoms in zip(got, structures[:4], strict=True):
        assert s.source == "teacher-emt" and s.labelled_by.startswith("EMT (ase ")
        np.testing.assert_allclose(s.positions, atoms.positions, atol=1e-8)
        reference = atoms.copy()
        reference.calc = EMT()
        assert s.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(s.forces, reference.get_forces(), atol=1e-6)
    # stress where the input had one, or unlabelled and periodic in 3D; none for a slab
    assert [s.stress is not None for s in got] == [True, False, True, False]
    assert [s.family for s in got] == ["bulk", "surface", "", ""]
    raw = ase.io.read(files[0], index=0)
    assert raw.info["labelled_from"] == f"{tmp_path / 'in.extxyz'}#0"
    # packed, the store names the teacher of the source
    found, sources = collect_inputs([tmp_path / "out"])
    pack(found, tmp_path / "store", PackConfig(workers=1), sources=sources)
    store = Store(tmp_path / "store")
    assert store.sources == ["teacher-emt"] and len(store) == 4
    assert store.labelled_by["teacher-emt"].startswith("EMT (ase ")


def test_a_stopped_labelling_resumes_and_other_inputs_are_refused(tmp_path: Path) -> None:
    _inputs(tmp_path / "in.extxyz")
    args = ([tmp_path / "in.extxyz"], tmp_path / "out", EMT_TEACHER)
    label_files(*args, chunk=2, workers=1, progress=False)
    folder = tmp_path / "out" / "teacher-emt"
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("chunk-*")}
    assert len(kept) == 3
    (folder / "chunk-00001.extxyz").unlink()  # as if stopped before its rename
    again = label_files(*args, chunk=2, workers=1, progress=False)
    assert again["written_now"] == 2  # chunk 1 only: the unlabelled bulk and the molecule
    for name, mtime in kept.items():
        if name != "chunk-00001.extxyz":
            assert (folder / name).stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match=r"chunk.*manifest differs"):
        label_files(*args, chunk=3, workers=1, progress=False)
    ase.io.write(tmp_path / "other.extxyz", bulk("Cu", "fcc", a=3.6))
    with pytest.raises(DataError, match=r"inputs.*manifest differs"):
        label_files([tmp_path / "other.extxyz"], *args[1:], chunk=2, progress=False)


def test_the_cli_labels_with_sevennet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sevenn")
    ase.io.write(tmp_path / "si.extxyz", bulk("Si", "diamond", a=5.43))
    out = tmp_path / "out"
    assert main(["data", "label", str(tmp_path / "si.extxyz"), "--out", str(out), "--workers",
                 "1"]) == 0  # fmt: skip
    assert "teacher-sevennet: 1 structures labelled now by SevenNet-0" in capsys.readouterr().out
    (s,) = read_structures(out / "teacher-sevennet" / "chunk-00000.extxyz")
    assert s.labelled_by.startswith("SevenNet-0 (sevenn 0.13") and s.stress is not None
    assert -5.6 < s.energy / 2 < -5.0  # eV/atom: PBE's diamond Si, about -5.4
    assert main(["data", "label", str(tmp_path / "nope.xyz"), "--out", str(out)]) == 2
    assert "nope.xyz" in capsys.readouterr().err


def test_inputs_grown_at_the_end_extend_the_folder(tmp_path: Path) -> None:
    """More files after the old ones (as `data generate` adds chunks) label only what is new;
    the old last chunk, cut short, is labelled again with the new structures; a file before
    the old ones changes every chunk and is refused."""
    (tmp_path / "in").mkdir()
    _inputs(tmp_path / "in" / "a.extxyz")
    args = ([tmp_path / "in"], tmp_path / "out", EMT_TEACHER)
    first = label_files(*args, chunk=4, workers=1, progress=False)
    assert first["written_now"] == 4 and first["chunks"] == 2
    folder = tmp_path / "out" / "teacher-emt"
    before = (folder / "chunk-00000.extxyz").stat().st_mtime_ns
    ase.io.write(tmp_path / "in" / "b.extxyz", bulk("Cu", "fcc", a=3.6).repeat(2))
    grown = label_files(*args, chunk=4, workers=1, progress=False)
    assert grown["written_now"] == 1 and grown["structures"] == 7  # Fe and Fm skipped again
    assert (folder / "chunk-00000.extxyz").stat().st_mtime_ns == before
    assert len(list(read_structures(folder / "chunk-00001.extxyz"))) == 1
    ase.io.write(tmp_path / "in" / "0.extxyz", bulk("Cu", "fcc", a=3.6))
    with pytest.raises(DataError, match="inputs"):
        label_files(*args, chunk=4, workers=1, progress=False)
