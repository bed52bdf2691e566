"""The sharded store: write once (by any number of packers), read at random by any number of
processes through memory maps.

Directory layout::

    STORE/
      meta.json               sources, families, the model that labelled each teacher-labelled
                              source, shard list with CRC-32s, statistics
      shards/*.msshard        binary shards (see matscale.data.shard)
      parts/<part>.json       each packer's shard list and skip report (merged into meta.json)
      parts/<part>.stats.npz  each packer's exact statistics accumulators
      parts/<part>.skipped.jsonl  every record a packer skipped: file, record, field, reason
      index/*.npy             per-structure n_atoms, n_edges, source, family (global ids),
                              memory-mapped by samplers without opening a shard

Reading keeps memory flat however large the store: the index arrays are memory-mapped, shards
are opened lazily (at most ``max_open`` at once, which bounds the mapped pages), and each
shard's checksum is checked the first time a process opens it (``verify="first-use"``), so a
corrupt shard is named, never read as garbage.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np

from matscale.data.shard import Shard, crc32_file
from matscale.data.stats import StatsAccumulator
from matscale.data.structure import Structure
from matscale.errors import CorruptShardError, DataError

META = "meta.json"
FORMAT_VERSION = 1
Verify = Literal["first-use", "open", "never"]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and rename, so readers never see half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """Refuse a ``meta.json`` whose fields do not make a store (not checksummed: an edit by
    hand, a file from elsewhere), naming the field: the readers would otherwise fail deep
    inside with a KeyError, or read on with a wrong count."""

    def bad(field: str, why: str) -> DataError:
        return DataError(f"{why}; repack the store (`matscale data pack`)", file=str(path),
                         field=field)  # fmt: skip

    for field in ("sources", "families"):
        names = meta.get(field)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(field, "expected a list of names")
    cutoff = meta.get("cutoff_A")
    if isinstance(cutoff, bool) or not isinstance(cutoff, int | float) or not 0 < cutoff < 1e3:
        raise bad("cutoff_A", f"expected a cutoff in Å, got {cutoff!r}")
    shards = meta.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(e, dict) and isinstance(e.get("file"), str)
        and isinstance(e.get("n_structures"), int) and isinstance(e.get("crc32"), int)
        for e in shards
    ):  # fmt: skip
        raise bad("shards", "expected a list of {file, n_structures, crc32}")
    total = sum(e["n_structures"] for e in shards)
    if meta.get("n_structures", total) != total:
        raise bad("n_structures", f"says {meta['n_structures']}, and its shards hold {total}")
    stats = meta.get("stats")
    if not isinstance(stats, dict) or set(stats) != set(meta["sources"]):
        have = sorted(stats) if isinstance(stats, dict) else None
        raise bad("stats", f"expected the statistics of sources {meta['sources']}, got {have}")


def merge_parts(root: Path, *, one_packing: bool = True) -> dict[str, Any]:
    """Combine every packer's part files under ``root/parts`` into ``meta.json`` and ``index/``.

    Shards are ordered by part name then by shard name, so the global structure order is
    reproducible. ``one_packing``: the parts are one packing run's, so they must have kept
    records by the same settings (False for :func:`matscale.data.combine.combine_stores`,
    whose inputs are stores packed each their own way). Runs in flat memory: index arrays are
    filled shard by shard into ``.npy`` memory maps. Returns the new metadata.
    """
    part_files = sorted((root / "parts").glob("*.json"))
    if not part_files:
        raise DataError("no packed parts to merge (parts/*.json missing)", file=str(root))
    parts = []
    for pf in part_files:
        try:
            parts.append(json.loads(pf.read_text()))
        except json.JSONDecodeError as exc:
            raise DataError(f"part file is not valid JSON ({exc})", file=str(pf)) from exc
    _check_parts_complete(parts, part_files)
    filters = {json.dumps(p.get("filters"), sort_keys=True) for p in parts}
    if one_packing and len(filters) > 1:
        settings = ", ".join(sorted(filters))
        raise DataError(
            f"parts were packed with different --require or --max-force ({settings}): pack "
            "them again with the same settings",
            file=str(root),
        )
    cutoffs = {p["cutoff"] for p in parts}
    if len(cutoffs) != 1:
        raise DataError(
            f"parts were packed with different cutoffs {sorted(cutoffs)}", file=str(root)
        )
    shards = [entry for p in parts for entry in p["shards"]]
    sources = sorted({name for p in parts for name in p["sources"]})
    families = sorted({name for p in parts for name in p["families"]})
    labelled_by = _labellers(parts, part_files)
    stats = StatsAccumulator()
    skipped: dict[str, int] = {}
    for pf, p in zip(part_files, parts, strict=True):
        if not pf.with_suffix(".stats.npz").is_file():
            raise DataError("statistics of this part are missing", file=str(pf))
        stats.merge(StatsAccumulator.load(pf.with_suffix(".stats.npz")))
        for reason, count in p["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
    total = sum(e["n_structures"] for e in shards)
    if total == 0:  # a store of nothing would only fail later, in whatever reads it
        why = f"every record was skipped ({skipped_words(root, skipped)})" if skipped else ""
        raise DataError(
            f"no structure to store: {why or 'the inputs hold none'}; nothing was written",
            file=", ".join(sorted({f for p in parts for f in p.get("inputs", [])})) or str(root),
        )
    (root / "index").mkdir(exist_ok=True)
    index = {
        name: np.lib.format.open_memmap(
            root / "index" / f"{name}.npy.tmp", mode="w+", dtype=dtype, shape=(total,)
        )
        for name, dtype in (
            ("n_atoms", np.uint32),
            ("n_edges", np.uint32),
            ("source", np.uint16),
            ("family", np.uint16),
        )
    }
    src_id = {n: i for i, n in enumerate(sources)}
    fam_id = {n: i for i, n in enumerate(families)}
    pos = 0
    for entry in shards:
        if not (root / "shards" / entry["file"]).is_file():
            raise DataError(
                "shard listed by a part is missing", file=str(root / "shards" / entry["file"])
            )
        shard = Shard(root / "shards" / entry["file"])
        a, n = shard.arrays, shard.n_structures
        index["n_atoms"][pos : pos + n] = np.diff(a["atom_start"])
        index["n_edges"][pos : pos + n] = a["n_edges"]
        index["source"][pos : pos + n] = np.array([src_id[s] for s in shard.sources])[a["source"]]
        index["family"][pos : pos + n] = np.array([fam_id[f] for f in shard.families])[a["family"]]
        pos += n
    repeats = _repeats(part_files, np.asarray(index["source"]))
    for name, arr in index.items():
        arr.flush()
        del arr
        os.replace(root / "index" / f"{name}.npy.tmp", root / "index" / f"{name}.npy")
    meta = {
        "format_version": FORMAT_VERSION,
        "cutoff_A": parts[0]["cutoff"],
        "n_structures": total,
        "n_atoms": sum(e["n_atoms"] for e in shards),
        "bytes": sum(e["bytes"] for e in shards),
        "sources": sources,
        "families": families,
        "labelled_by": labelled_by,
        "shards": shards,
        "skipped": skipped,
        # which records were kept: None where the parts' settings differ (a combination)
        "filters": parts[0].get("filters") if len(filters) == 1 else None,
        "repeated_structures": repeats,
        "stats": stats.summary(),
        # the index arrays are checked like shards (`data info --verify`): an edited or
        # damaged one would batch and label structures wrongly without failing to read
        "index_crc32": {name: crc32_file(root / "index" / f"{name}.npy") for name in index},
    }
    write_json_atomic(root / META, meta)
    return meta


def repeats_note(meta: dict[str, Any]) -> str:
    """A warning about a store's repeated structures, in words ("" if none)."""
    n = meta.get("repeated_structures") or 0
    if not n:
        return ""
    return (
        f"warning: {n:,} of the {meta['n_structures']:,} structures repeat another one of "
        "their source "
        "(same elements, positions and cell: a file packed twice, or a database beside the "
        "file it was written from?); the split may put copies in both training and "
        "validation or test, which flatters their errors"
    )


def _repeats(part_files: list[Path], source: np.ndarray) -> int | None:
    """Structures that repeat an earlier one of the same source (same elements, positions and
    cell: :func:`matscale.data.pack.fingerprint`); ``source`` [n_structures] the store's
    source ids, in the parts' order. The same geometry under two sources (relabelled by a
    teacher, say) is two labellings, not a repeat. None where a part has no fingerprints
    (packed before they were kept)."""
    found = [pf.with_suffix(".fingerprints.npy") for pf in part_files]
    if not all(f.is_file() for f in found):
        return None
    prints = np.concatenate([np.load(f) for f in found])  # merge_parts has 1+ parts
    if len(prints) != len(source):  # written by another packing than the shards: no count
        return None
    pairs = np.stack([source.astype(np.uint64), prints.astype(np.uint64)], axis=1)
    return int(len(pairs) - len(np.unique(pairs, axis=0)))


def skipped_words(root: Path, skipped: dict[str, int]) -> str:
    """Skipped records by reason, and the first one's file, record and field, in words."""
    counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    if any(reason in ("energy: missing", "forces: missing") for reason in skipped):
        # MACE's and many codes' extxyz keep labels under their own keys: REF_energy, ...
        counts += (
            " (labels under other keys, as MACE's REF_energy? --reader-option "
            "energy_key=KEY, forces_key=KEY, stress_key=KEY)"
        )
    for listing in sorted((root / "parts").glob("*.skipped.jsonl")):
        with open(listing) as fh:
            if first := fh.readline().strip():
                row = json.loads(first)
                where = ", ".join(
                    f"{k} {row[k]}" for k in ("file", "record", "field") if row.get(k) is not None
                )
                return f"{counts}; the first: {where}: {row.get('reason', '?')}"
    return counts


def _labellers(parts: list[dict[str, Any]], files: list[Path]) -> dict[str, str]:
    """The model that labelled each source that a model labelled (a teacher), from every
    part; a source labelled differently by two parts is refused (one level of theory)."""
    out: dict[str, str] = {}
    for pf, p in zip(files, parts, strict=True):
        for source, labeller in p.get("labelled_by", {}).items():
            if out.setdefault(source, labeller) != labeller:
                raise DataError(
                    f"source {source!r} is labelled by {out[source] or 'its own calculator'!r} "
                    f"in one part and by {labeller or 'its own calculator'!r} in this one",
                    file=str(pf),
                )
    return {s: v for s, v in sorted(out.items()) if v}


def _check_parts_complete(parts: list[dict[str, Any]], files: list[Path]) -> None:
    """Refuse parts of different packing runs, or a merge before every part is written."""
    runs = {(p.get("n_parts", 1), p.get("inputs_digest", "")) for p in parts}
    if len(runs) > 1:
        raise DataError(
            "parts come from different packing runs (other inputs or --part N); "
            "remove the stale ones from parts/ and shards/ or pack again",
            file=str(files[0].parent),
        )
    n_parts = runs.pop()[0]
    missing = sorted(set(range(n_parts)) - {p.get("part", 0) for p in parts})
    if missing:
        raise DataError(
            f"parts {missing} of {n_parts} are not packed yet", file=str(files[0].parent)
        )


class Store:
    """Random access to a packed store. Picklable: each process reopens shards on its own.

    Parameters
    ----------
    path: the store directory.
    verify: ``"first-use"`` checks a shard's CRC-32 when this process first opens it;
        ``"open"`` checks every shard now; ``"never"`` trusts the files.
    max_open: shards kept open at once (least recently used closed first). Pages of an open
        shard that were read count as (file-backed, reclaimable) resident memory, so
        ``max_open × shard size`` bounds what reading adds to RSS: 1 GiB with the defaults,
        however large the store.
    """

    def __init__(self, path: str | Path, *, verify: Verify = "first-use", max_open: int = 16):
        self.path = Path(path)
        meta_path = self.path / META
        if not self.path.exists():
            raise DataError("no such store folder", file=str(self.path))
        if self.path.is_file():
            raise DataError(
                "is a file: give the store's folder (the one holding meta.json and shards/)",
                file=str(self.path),
            )
        if not meta_path.is_file():
            raise DataError(
                "not a matscale store (meta.json missing; run `matscale data pack`)",
                file=str(self.path),
            )
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"meta.json is not valid JSON ({exc})", file=str(meta_path)) from exc
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"store format {self.meta.get('format_version')} is not {FORMAT_VERSION}",
                file=str(meta_path),
            )
        check_meta(self.meta, meta_path)
        self.sources: list[str] = self.meta["sources"]
        self.families: list[str] = self.meta["families"]
        #: source -> the model that labelled it, for the sources a model labelled (a teacher)
        self.labelled_by: dict[str, str] = self.meta.get("labelled_by", {})
        self._source_index = {n: i for i, n in enumerate(self.sources)}
        self._family_index = {n: i for i, n in enumerate(self.families)}
        self.cutoff: float = self.meta["cutoff_A"]
        self._entries: list[dict[str, Any]] = self.meta["shards"]
        counts = [e["n_structures"] for e in self._entries]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.verify = verify
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[Shard, np.ndarray, np.ndarray]] = OrderedDict()
        self._verified: set[int] = set()
        self._load_index()
        if verify == "open":
            for k in range(len(self._entries)):
                self._shard(k)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def content_id(self) -> str:
        """A short hash of what the store holds (its shards' CRC-32s and counts, in order,
        and its sources and families): equal for copies of the store wherever they lie,
        different for a store packed from other data. Saved in checkpoints, so that a run
        does not resume on other data (its splits would then mean other structures)."""
        import hashlib

        key: list[Any] = [
            self.sources,
            self.families,
            [(e["n_structures"], e["crc32"]) for e in self._entries],
        ]
        if self.labelled_by:  # (absent before teachers: older stores keep their id)
            key.append(self.labelled_by)
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-source statistics computed while packing (see matscale.data.stats)."""
        return self.meta["stats"]

    def __getitem__(self, i: int) -> Structure:
        """Structure number ``i`` (0 ≤ i < len)."""
        if not 0 <= i < len(self):
            raise IndexError(f"structure {i} out of range for a store of {len(self)}")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        shard, src_map, fam_map = self._shard(k)
        local = i - int(self._starts[k])
        a = shard.arrays
        source = self.sources[src_map[a["source"][local]]]
        return shard.structure(
            local,
            source=source,
            family=self.families[fam_map[a["family"][local]]],
            labelled_by=self.labelled_by.get(source, ""),
        )

    def check_all(self) -> list[CorruptShardError]:
        """Check every shard's checksum and header, and the index arrays' checksums; return
        the errors found (empty if none)."""
        errors = []
        for k in range(len(self._entries)):
            path = self.path / "shards" / self._entries[k]["file"]
            if not path.is_file():
                errors.append(
                    CorruptShardError("shard listed in meta.json is missing", file=str(path))
                )
                continue
            try:
                Shard(
                    self.path / "shards" / self._entries[k]["file"],
                    expected_crc32=self._entries[k]["crc32"],
                )
            except CorruptShardError as exc:
                errors.append(exc)
        for name, crc in self.meta.get("index_crc32", {}).items():  # stores before 0.x: none
            path = self.path / "index" / f"{name}.npy"
            if not path.is_file() or crc32_file(path) != crc:
                errors.append(
                    CorruptShardError(
                        "index array missing or changed since packing (CRC-32 differs): "
                        f"rebuild it with `matscale data merge {self.path}`",
                        file=str(path),
                    )
                )
        return errors

    def _shard(self, k: int) -> tuple[Shard, np.ndarray, np.ndarray]:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        entry = self._entries[k]
        path = self.path / "shards" / entry["file"]
        if not path.is_file():
            raise DataError("shard listed in meta.json is missing", file=str(path))
        check = self.verify != "never" and k not in self._verified
        shard = Shard(path, expected_crc32=entry["crc32"] if check else None)
        self._verified.add(k)
        src, fam = self._source_index, self._family_index
        unlisted = sorted(set(shard.sources) - set(src)) + sorted(set(shard.families) - set(fam))
        if unlisted:  # meta.json edited, or from another packing
            raise DataError(
                f"shard {entry['file']} holds sources or families {unlisted} that meta.json does "
                "not list; repack the store (`matscale data pack`), or restore its meta.json",
                file=str(self.path / META),
            )
        maps = (
            np.array([src[s] for s in shard.sources]),
            np.array([fam[f] for f in shard.families]),
        )
        self._open[k] = (shard, *maps)
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return self._open[k]

    def _load_index(self) -> None:
        """Memory-map the per-structure index arrays (checked against meta.json):
        ``n_atoms``, ``n_edges`` (at :attr:`cutoff`), ``source_ids`` and ``family_ids``."""
        arrays = {}
        for attr, name in (
            ("n_atoms", "n_atoms"),
            ("n_edges", "n_edges"),
            ("source_ids", "source"),
            ("family_ids", "family"),
        ):
            path = self.path / "index" / f"{name}.npy"
            try:
                arrays[attr] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(
                    f"index array missing or unreadable ({exc}); run `matscale data merge` again",
                    file=str(path),
                ) from exc
            if len(arrays[attr]) != len(self):
                raise DataError(
                    f"index has {len(arrays[attr])} entries, meta.json {len(self)}", file=str(path)
                )
        self.n_atoms: np.ndarray = arrays["n_atoms"]
        self.n_edges: np.ndarray = arrays["n_edges"]
        self.source_ids: np.ndarray = arrays["source_ids"]
        self.family_ids: np.ndarray = arrays["family_ids"]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # memory maps do not travel to worker processes
        for name in ("n_atoms", "n_edges", "source_ids", "family_ids"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load_index()
