"""HydraGNN's ADIOS2 graph datasets: files the tests write in AdiosWriter's layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from matscale.data.pack import PackConfig, collect_inputs, pack
from matscale.data.readers import read_structures
from matscale.data.store import Store
from matscale.data.structure import Structure
from matscale.errors import DataError
from tests.conftest import emt_structures, molecules

adios2 = pytest.importorskip("adios2")


def _graph(s: Structure) -> dict[str, np.ndarray]:
    """One structure as HydraGNN's atomistic examples make a PyG Data (float32, pbc as int)."""
    n = s.n_atoms
    z = s.numbers.astype(np.float32).reshape(-1, 1)
    pos = s.positions.astype(np.float32)
    forces = s.forces.astype(np.float32)
    edges = np.array([np.arange(n), np.roll(np.arange(n), 1)])  # any graph: not read
    periodic = bool(s.pbc.any())
    return {
        "natoms": np.array([n], dtype=np.int32),
        "pos": pos,
        "cell": (s.cell if periodic else np.eye(3)).astype(np.float32),
        "pbc": s.pbc.astype(np.int32),
        "atomic_numbers": z,
        "x": np.concatenate([z, pos, forces], axis=1),
        "energy": np.array([s.energy], dtype=np.float32),
        "energy_per_atom": np.array([s.energy / n], dtype=np.float32),
        "forces": forces,
        "edge_index": edges,
        "y": np.array([s.energy], dtype=np.float32),
    }


def write_hydragnn(
    path: Path, sets: dict[str, list[Structure]], *, name: str | None = None, drop: str = ""
) -> Path:
    """Write ``sets`` (label -> structures) as AdiosWriter lays a dataset out: per label and
    field the graphs concatenated along the one axis whose extent varies, with each graph's
    count and offset along it."""
    with adios2.Stream(str(path), "w") as out:
        for _ in out.steps(1):
            for label, structures in sets.items():
                graphs = [_graph(s) for s in structures]
                keys = [k for k in graphs[0] if k != drop]
                out.write_attribute(f"{label}/ndata", np.array(len(graphs)))
                out.write_attribute(f"{label}/keys", keys)
                for k in keys:
                    arrays = [g[k] for g in graphs]
                    shapes = np.array([a.shape for a in arrays])
                    varying = np.nonzero(shapes.min(0) != shapes.max(0))[0]
                    dim = int(varying[0]) if len(varying) else 0
                    val = np.ascontiguousarray(np.concatenate(arrays, axis=dim))
                    out.write(f"{label}/{k}", val, list(val.shape), [0] * val.ndim, list(val.shape))
                    out.write_attribute(f"{label}/{k}/variable_dim", np.array(dim))
                    count = shapes[:, dim].astype(np.int64)
                    offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
                    for what, arr in (("variable_count", count), ("variable_offset", offset)):
                        out.write(f"{label}/{k}/{what}", arr, [len(arr)], [0], [len(arr)])
            out.write_attribute("total_ndata", np.array(sum(map(len, sets.values()))))
            if name:
                out.write_attribute("dataset_name", name)
    return path


def _same(a: Structure, b: Structure) -> None:
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)
    np.testing.assert_allclose(a.forces, b.forces, atol=1e-5)
    assert a.energy == pytest.approx(b.energy, rel=1e-6)


def test_every_graph_of_every_label_reads_back(tmp_path: Path) -> None:
    sets = {"trainset": emt_structures(5, seed=1), "valset": emt_structures(3, seed=2)}
    sets["testset"] = molecules(2, seed=3)
    path = write_hydragnn(tmp_path / "mptrj.bp", sets, name="mptrj")
    read = list(read_structures(path))
    assert [s.family for s in read] == ["testset"] * 2 + ["trainset"] * 5 + ["valset"] * 3
    assert {s.source for s in read} == {"mptrj"}  # the file's dataset_name
    expected = sets["testset"] + sets["trainset"] + sets["valset"]
    for got, want in zip(read, expected, strict=True):
        _same(got, want)
        np.testing.assert_array_equal(got.pbc, want.pbc)
        if want.pbc.any():
            np.testing.assert_allclose(got.cell, want.cell, atol=1e-5)
        else:  # HydraGNN writes an identity cell for a molecule: read as no cell
            assert not got.cell.any()
        assert got.stress is None
    assert read[3].key == f"{path}#trainset/1"


def test_reading_in_blocks_equals_reading_at_once(tmp_path: Path, monkeypatch) -> None:
    import matscale.data.adios as reader

    path = write_hydragnn(tmp_path / "d.bp", {"trainset": emt_structures(7, seed=4)})
    whole = list(read_structures(path))
    monkeypatch.setattr(reader, "BLOCK", 3)
    for a, b in zip(list(read_structures(path)), whole, strict=True):
        _same(a, b)


def test_options_pick_labels_and_the_energy_per_atom(tmp_path: Path) -> None:
    sets = {"trainset": emt_structures(3, seed=5), "testset": emt_structures(2, seed=6)}
    path = write_hydragnn(tmp_path / "d.bp", sets, drop="energy")
    read = list(read_structures(path, labels="testset", energy_key="energy_per_atom"))
    assert len(read) == 2 and read[0].source == "d"  # no dataset_name: the file's stem
    for got, want in zip(read, sets["testset"], strict=True):
        _same(got, want)
    # without atomic_numbers, the first column of x
    path = write_hydragnn(tmp_path / "x.bp", sets, drop="atomic_numbers")
    np.testing.assert_array_equal(
        next(iter(read_structures(path))).numbers, sets["testset"][0].numbers
    )


def test_bad_files_name_the_file_the_label_and_the_field(tmp_path: Path) -> None:
    sets = {"trainset": emt_structures(2, seed=7)}
    no_pos = write_hydragnn(tmp_path / "nopos.bp", sets, drop="pos")
    with pytest.raises(DataError, match=r"nopos\.bp.*trainset.*pos"):
        list(read_structures(no_pos))
    good = write_hydragnn(tmp_path / "good.bp", sets)
    with pytest.raises(DataError, match=r"labels \['testset'\] not in the file"):
        list(read_structures(good, labels="testset"))
    with pytest.raises(DataError, match="energy_key"):
        list(read_structures(good, energy_key="y"))
    fake = tmp_path / "fake.bp"
    fake.mkdir()
    (fake / "md.idx").write_bytes(b"not adios")
    with pytest.raises(DataError, match=r"fake\.bp"):
        list(read_structures(fake))


def test_a_bp_folder_packs_as_one_input(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_hydragnn(data / "oc.bp", {"trainset": emt_structures(4, seed=8)}, name="oc20")
    (data / "oc.bp" / "profiling.json").write_text("{}")  # ADIOS2 writes one: not MPtrj
    files, sources = collect_inputs([data])
    assert files == [data / "oc.bp"]
    pack(files, tmp_path / "store", PackConfig(workers=1), sources=sources, progress=False)
    store = Store(tmp_path / "store")
    assert len(store) == 4 and store.sources == ["oc20"] and store.families == ["trainset"]
    files, _ = collect_inputs([data / "oc.bp"])
    assert files == [data / "oc.bp"]


def test_without_adios2_the_error_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import sys

    path = write_hydragnn(tmp_path / "d.bp", {"trainset": emt_structures(1, seed=9)})
    monkeypatch.setitem(sys.modules, "adios2", None)
    with pytest.raises(DataError, match=r"adios2 package.*\[adios\]"):
        list(read_structures(path))
