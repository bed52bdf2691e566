"""combine_stores: one store read as the union of others, without copying their shards."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from matscale.data.combine import combine_stores
from matscale.data.pack import PackConfig, pack
from matscale.data.store import Store
from matscale.errors import DataError
from tests.conftest import emt_structures


def _store(tmp_path: Path, name: str, source: str, cutoff: float = 4.0) -> Path:
    path = tmp_path / f"{name}.extxyz"
    ase.io.write(path, [s.to_atoms() for s in emt_structures(10, seed=3, source=source)])
    pack([path], tmp_path / name, PackConfig(workers=1, cutoff=cutoff), progress=False)
    return tmp_path / name


def test_the_union_reads_every_structure_of_each_store_in_order(
    tiny_store: Path, tmp_path: Path
) -> None:
    extra = _store(tmp_path, "extra", "emt-extra")
    combined = combine_stores([extra, tiny_store], tmp_path / "both")
    first, second = Store(extra), Store(tiny_store)
    assert len(combined) == len(first) + len(second)
    assert combined.sources == sorted(first.sources + second.sources)
    for k, (store, i) in enumerate([(first, 0), (first, len(first) - 1), (second, 0), (second, 5)]):
        j = i if k < 2 else len(first) + i
        a, b = store[i], combined[j]
        assert np.array_equal(a.positions, b.positions) and a.energy == b.energy
        assert a.source == b.source and a.family == b.family
    # statistics are the inputs' own, per source
    for source in first.sources:
        assert combined.stats[source] == first.stats[source]
    # shards are linked, not copied: the same inode where the file system allows it
    shard = next((extra / "shards").iterdir())
    assert (tmp_path / "both" / "shards" / f"s0-{shard.name}").stat().st_ino == shard.stat().st_ino

    # again with the same inputs: the store as it is (a resumed run); other inputs: refused
    assert len(combine_stores([extra, tiny_store], tmp_path / "both")) == len(combined)
    with pytest.raises(DataError, match="is not the combination of these stores"):
        combine_stores([tiny_store, extra], tmp_path / "both")


def test_stores_of_other_cutoffs_or_not_stores_are_refused(
    tiny_store: Path, tmp_path: Path
) -> None:
    wide = _store(tmp_path, "wide", "emt-wide", cutoff=5.0)
    with pytest.raises(DataError, match=r"different cutoffs \[4\.0, 5\.0\]"):
        combine_stores([tiny_store, wide], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(DataError, match="not a packed store"):
        combine_stores([tiny_store, tmp_path], tmp_path / "nope")


def test_a_store_given_twice_or_with_its_copy_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    # each structure was combined twice without a word: a copy could land in training and
    # the other in validation
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_store, copy)
    for twice in ([tiny_store, tiny_store], [tiny_store, copy]):
        with pytest.raises(DataError, match=r"holds the same structures as .*give each store once"):
            combine_stores(twice, tmp_path / "twice")
        assert not (tmp_path / "twice").exists()


def test_an_out_that_is_a_file_or_a_folder_of_other_files_is_refused_before_any_work(
    tiny_store: Path, tmp_path: Path
) -> None:
    # a file as --out built the whole store in FILE.tmp, failed on the rename and left it
    extra = _store(tmp_path, "extra", "emt-extra")
    (tmp_path / "notes.yaml").write_text("mine\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "mine.txt").write_text("mine\n")
    for out, words in [("notes.yaml", "is a file"), ("folder", "folder is not empty")]:
        with pytest.raises(DataError, match=rf"{out}: {words}"):
            combine_stores([tiny_store, extra], tmp_path / out)
        assert not (tmp_path / f"{out}.tmp").exists()
    assert (tmp_path / "notes.yaml").read_text() == "mine\n"
    assert [p.name for p in (tmp_path / "folder").iterdir()] == ["mine.txt"]
