"""``matscale data pack``: stream files of any reader into a sharded store, in parallel.

Each worker process owns a disjoint set of input files and writes its own shards and part
files; :func:`matscale.data.store.merge_parts` then combines the parts' indexes. Several nodes
pack one store by giving each a different ``part`` of ``n_parts`` (same file list, same output
directory on a shared file system) and running ``matscale data merge`` once at the end.

Records that fail :func:`check_structure` are skipped, counted by reason, and listed in
``parts/<part>.skipped.jsonl`` with file, record and field; a file that cannot be parsed stops
packing with a :class:`DataError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.generate.threads import single_threaded_children
from matscale.data.graph import edge_census
from matscale.data.readers import DATA_SUFFIXES, read_structures
from matscale.data.shard import ShardBuilder
from matscale.data.stats import StatsAccumulator
from matscale.data.store import META, merge_parts, repeats_note, skipped_words, write_json_atomic
from matscale.data.structure import Structure, check_structure, source_name_problem
from matscale.errors import DataError


@dataclass(kw_only=True)
class PackConfig:
    """How ``matscale data pack`` turns files into a store."""

    cutoff: float = 5.0
    """Radius (Å) at which neighbours are counted per structure (for edge-bounded batches)."""
    shard_mb: float = 64.0
    """Target shard size in MiB; a shard is closed once it reaches this size."""
    require: tuple[str, ...] = ("energy",)
    """Labels every record must carry; others are skipped and counted (energy, forces, stress)."""
    max_force: float | None = 100.0
    """Skip structures with any force component above this (eV/Å), as the paper did."""
    workers: int = 0
    """Packing processes; 0 uses every core."""
    format: str | None = None
    """Reader for every input (ase, ase-db, aselmdb, ani-h5, mptrj); None guesses from names."""
    source: str | None = None
    """Source name for records that carry none; None uses each file's stem."""
    reader_options: dict[str, str] = field(default_factory=dict)
    """Options of the reader (``energy_key`` for mptrj, ``energy_unit`` for ani-h5)."""

    def filters(self) -> dict[str, Any]:
        """The settings that decide which records a store keeps, recorded with each part
        (and the store): parts packed with other ones must not be merged into one store."""
        return {"require": sorted(self.require), "max_force_eV_per_A": self.max_force}

    part: int = 0
    """Which part of the file list this packer takes (for several nodes packing one store)."""
    n_parts: int = 1
    """How many packers share the file list; merging runs when this is 1."""

    def __post_init__(self) -> None:
        unknown = set(self.require) - {"energy", "forces", "stress"}
        if unknown:
            raise DataError(
                f"--require names unknown labels {sorted(unknown)}; known: energy, forces, stress"
            )
        if not 0 <= self.part < self.n_parts:
            raise DataError(f"part {self.part} is not in 0..{self.n_parts - 1} (--part I/N)")
        if self.shard_mb <= 0 or self.cutoff <= 0:
            raise DataError("shard size and cutoff must be positive")


def pack(
    files: list[Path],
    out: Path,
    config: PackConfig,
    *,
    sources: dict[Path, str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Pack ``files`` into the store at ``out``; return the merged metadata (or, when
    ``n_parts > 1``, this part's report, to be merged by ``merge_parts`` later).

    ``sources`` names the source of each file's records that carry none (default: the file's
    stem; ``config.source`` overrides both). With one part the store is built in a folder
    beside ``out`` and takes its place only once complete, so a pack that fails leaves
    whatever was at ``out`` as it was; an existing store is replaced only with ``overwrite``.
    With several parts, each writes into ``out`` directly and records a digest of the input
    list, and ``merge_parts`` refuses parts of different packing runs.
    """
    check_destination(files, out, overwrite=overwrite, parts=config.n_parts > 1)
    if config.n_parts > 1:
        return _pack_into(files, out, config, sources=sources, progress=progress, shown=out)
    work = out.parent / f".{out.name}.packing"
    shutil.rmtree(work, ignore_errors=True)  # what a pack that crashed left
    try:
        meta = _pack_into(files, work, config, sources=sources, progress=progress, shown=out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _replace_folder(work, out)
    return meta


def check_destination(files: list[Path], out: Path, *, overwrite: bool, parts: bool) -> None:
    """Refuse a store folder that would lose or mix a user's files: one that is a file, holds
    input files, holds a store (without ``overwrite``), or holds anything but a store or
    parts of one."""
    if out.exists() and not out.is_dir():
        raise DataError("is a file, not a folder: choose another --out", file=str(out))
    resolved = out.resolve()
    if any(resolved == f.resolve() or resolved in f.resolve().parents for f in files):
        raise DataError(
            "the store folder contains input files; choose another --out", file=str(out)
        )
    if (out / META).exists() and not overwrite:
        raise DataError(
            "a store already exists here (use --overwrite to replace it)", file=str(out)
        )
    if (
        out.is_dir()
        and any(out.iterdir())
        and not ((out / META).exists() or (out / "parts").is_dir())
    ):
        raise DataError(
            "folder is not empty and not a store; refusing to write into it", file=str(out)
        )
    if parts and (out / META).exists() and overwrite:
        raise DataError(
            "--overwrite replaces a store in one pass, not part by part: pack the parts into "
            "a new folder (or remove the old store first)",
            file=str(out),
        )


def _replace_folder(new: Path, old: Path) -> None:
    """Put the finished folder ``new`` at ``old``'s place (two renames on one file system);
    the folder it replaces is deleted only after."""
    if not old.exists():
        os.replace(new, old)
        return
    aside = old.parent / f".{old.name}.replaced"
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(old, aside)
    os.replace(new, old)
    shutil.rmtree(aside, ignore_errors=True)


def _pack_into(
    files: list[Path],
    out: Path,
    config: PackConfig,
    *,
    sources: dict[Path, str] | None,
    progress: bool,
    shown: Path,
) -> dict:
    """:func:`pack`'s work, written into ``out`` (a fresh folder, or one part's share);
    ``shown``: the store's folder as the user named it (``out`` may be a temporary one)."""
    if not files:
        raise DataError("no input files given")
    for f in files:
        if not Path(f).exists():
            raise DataError("no such file", file=str(f))
    # Parts and workers take contiguous runs of the sorted file list and name their shards by
    # the run's first file, so the store's order is the files' order whatever the parallelism.
    ordered = sorted(Path(f) for f in files)
    # file names are bytes to the OS: one that is not UTF-8 must not break the digest
    digest = hashlib.sha256(b"\n".join(os.fsencode(f.resolve()) for f in ordered)).hexdigest()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    first, mine = _chunks(ordered, config.n_parts)[config.part]
    if not mine:  # more nodes than files: an empty part still tells the merge it is done
        writer = PartWriter(out, f"empty-p{config.part:04d}", config, digest=digest)
        writer.close()
        return {"part": config.part, "reports": [writer.report]}
    workers = min(config.workers or os.cpu_count() or 1, len(mine))
    runs = [(first + start, group) for start, group in _chunks(mine, workers) if group]
    groups = [group for _, group in runs]
    names = [f"f{start:07d}" for start, _ in runs]
    names_of = {str(f): (sources or {}).get(f, f.stem) for f in ordered}
    ctx = mp.get_context("spawn")  # fork + torch threads can deadlock; spawn is safe everywhere
    counter = ctx.Value("q", 0)
    if len(groups) == 1:
        _init_worker(counter)
        reports = [_pack_group(groups[0], out, names[0], config, names_of, digest)]
    else:
        # A process pool that notices a dead worker (BrokenProcessPool) instead of waiting forever.
        with (
            single_threaded_children(),
            ProcessPoolExecutor(
                len(groups), mp_context=ctx, initializer=_init_worker, initargs=(counter,)
            ) as pool,
        ):
            jobs = [
                pool.submit(_pack_group, g, out, n, config, names_of, digest)
                for g, n in zip(groups, names, strict=True)
            ]
            _wait(jobs, counter, progress)
            reports = [j.result() for j in jobs]
    skipped: Counter[str] = Counter()
    for r in reports:
        skipped.update(r["skipped"])
    # merged first: a pack left with no structure fails there, and names the first skipped
    # record itself, without pointing at listings that will not be kept
    result: dict[str, Any] = (
        merge_parts(out) if config.n_parts == 1 else {"part": config.part, "reports": reports}
    )
    if progress and (note := repeats_note(result)):
        print(note)
    if progress and skipped:
        print(
            f"skipped {sum(skipped.values())} records ({skipped_words(out, dict(skipped))}); "
            f"each is listed in {shown / 'parts'}/*.skipped.jsonl"
        )
    if progress and config.n_parts == 1:
        from matscale.data.info import warnings_about

        for warning in warnings_about(result["stats"]):
            print(f"warning: {warning}", file=sys.stderr)
    return result


_COUNTER: Any = None


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter


def _wait(jobs: list[Any], counter: Any, progress: bool) -> None:
    from matscale.progress import progress_bar

    with progress_bar(desc="packing", unit=" structures", enabled=progress) as bar:
        while not all(j.done() for j in jobs):
            time.sleep(0.2)
            bar.update(counter.value - bar.n)
        bar.update(counter.value - bar.n)


def _chunks(files: list[Path], n: int) -> list[tuple[int, list[Path]]]:
    """Cut ``files`` into ``n`` contiguous runs of similar total bytes: (first index, run)."""
    sizes = [max(_bytes(f), 1) for f in files]
    total = sum(sizes)
    out: list[tuple[int, list[Path]]] = []
    start, acc = 0, 0
    for k, size in enumerate(sizes):
        acc += size
        # close run number len(out) once it holds its share of the bytes
        if len(out) < n - 1 and acc >= total * (len(out) + 1) / n:
            out.append((start, files[start : k + 1]))
            start = k + 1
    out.append((start, files[start:]))
    out += [(len(files), [])] * (n - len(out))
    return out


def _pack_group(
    files: list[Path],
    out: Path,
    name: str,
    config: PackConfig,
    source_of: dict[str, str],
    digest: str,
) -> dict[str, Any]:
    """One worker: read ``files``, check each record, write shards and this part's files."""
    with PartWriter(out, name, config, inputs=[str(f) for f in files], digest=digest) as writer:
        for path in files:
            source = config.source or source_of.get(str(path)) or path.stem
            structures = read_structures(
                path, source=source, format=config.format, **config.reader_options
            )
            for rec, s in enumerate(structures):
                writer.add(s, file=str(path), record=s.key.rsplit("#", 1)[-1] or rec)
    return writer.report


class PartWriter:
    """Writes one part of a store: checks each structure, fills shards, keeps statistics.

    Use as a context manager; on exit it writes the last shard and the part's files
    (``parts/<name>.json``, ``.stats.npz``, ``.skipped.jsonl``), after which
    :func:`merge_parts` includes it in the store. This is also the API for packing structures
    that come from code rather than files (a generator, a simulation).
    """

    def __init__(
        self,
        out: Path,
        name: str,
        config: PackConfig,
        inputs: list[str] | None = None,
        digest: str = "",
    ) -> None:
        (out / "shards").mkdir(parents=True, exist_ok=True)
        (out / "parts").mkdir(exist_ok=True)
        self.out, self.name, self.config = out, name, config
        self.inputs = inputs or []
        self.digest = digest
        self.stats = StatsAccumulator()
        self.skipped: Counter[str] = Counter()
        self.shards: list[dict[str, Any]] = []
        self.sources: set[str] = set()
        self.families: set[str] = set()
        # source -> the model that labelled it ("" for the source's own calculator): a source
        # is one level of theory, so all its records must agree
        self.labelled_by: dict[str, str] = {}
        self._shard = ShardBuilder()
        self._fingerprints: list[int] = []
        self._skip_log = open(out / "parts" / f"{name}.skipped.jsonl", "w")
        self.report: dict[str, Any] = {}

    def add(
        self, s: Structure, *, file: str | None = None, record: int | str | None = None
    ) -> bool:
        """Check ``s`` and store it; return False (and count and log why) if it was skipped."""
        c = self.config
        if s.source not in self.sources and (why := source_name_problem(s.source)):
            raise DataError(why, file=file, record=record, field="source")
        labeller = self.labelled_by.setdefault(s.source, s.labelled_by)
        if labeller != s.labelled_by:
            raise DataError(
                f"source {s.source!r} mixes labels by {labeller or 'its own calculator'!r} and "
                f"{s.labelled_by or 'its own calculator'!r}: a source is one level of theory "
                "(name the other labels' source differently)",
                file=file,
                record=record,
                field="labelled_by",
            )
        try:
            check_structure(s, file=file, record=record, require=c.require, max_force=c.max_force)
        except DataError as exc:
            self.skipped[f"{exc.field}: {exc.kind or 'invalid'}"] += 1
            entry = {
                "file": exc.file,
                "record": exc.record,
                "field": exc.field,
                "reason": exc.reason,
            }
            self._skip_log.write(json.dumps(entry) + "\n")
            return False
        n_edges, pairs = edge_census(s.positions, s.cell, s.pbc, c.cutoff, s.numbers)
        self._fingerprints.append(fingerprint(s))
        self._shard.add(s, n_edges)
        self.stats.add(s, n_edges, pairs)
        self.sources.add(s.source)
        self.families.add(s.family)
        if self._shard.nbytes >= c.shard_mb * 2**20:
            self._flush()
        return True

    def _flush(self) -> None:
        if not len(self._shard):
            return
        path = self.out / "shards" / f"{self.name}-{len(self.shards):05d}.msshard"
        self.shards.append(self._shard.write(path))
        if _COUNTER is not None:
            with _COUNTER.get_lock():
                _COUNTER.value += len(self._shard)
        self._shard = ShardBuilder()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self._skip_log.close()
            return  # leave no part file: merge_parts must not see a half-written part
        self.close()

    def close(self) -> None:
        """Write the last shard and the part's files (the part is then ready to merge)."""
        self._skip_log.close()
        self._flush()
        self.stats.save(self.out / "parts" / f"{self.name}.stats.npz")
        np.save(
            self.out / "parts" / f"{self.name}.fingerprints.npy",
            np.asarray(self._fingerprints, dtype=np.uint64),
        )
        self.report = {
            "cutoff": self.config.cutoff,
            "filters": self.config.filters(),
            "part": self.config.part,
            "n_parts": self.config.n_parts,
            "inputs_digest": self.digest,
            "inputs": self.inputs,
            "shards": self.shards,
            "sources": sorted(self.sources),
            "families": sorted(self.families),
            "labelled_by": dict(sorted(self.labelled_by.items())),
            "skipped": dict(self.skipped),
        }
        write_json_atomic(self.out / "parts" / f"{self.name}.json", self.report)


def fingerprint(s: Structure) -> int:
    """A 64-bit hash of what makes two records the same structure: elements, positions and
    cell to 1e-4 Å, periodicity. The same file packed twice, or a database packed beside the
    extended XYZ it was written from, repeats structures, which the split can then put on
    both sides of training and test; the merge counts repeats by these."""
    key = hashlib.blake2b(digest_size=8)
    for part in (
        np.asarray(s.numbers, dtype=np.int64),
        np.round(np.asarray(s.positions) * 1e4).astype(np.int64),
        np.round(np.asarray(s.cell) * 1e4).astype(np.int64),
        np.asarray(s.pbc, dtype=np.bool_),
    ):
        key.update(part.tobytes())
    return int.from_bytes(key.digest(), "little")


def is_folder_format(path: Path) -> bool:
    """Whether ``path`` is one input although a folder (an ADIOS2 ``NAME.bp``)."""
    return path.suffix.lower() == ".bp"


def _bytes(path: Path) -> int:
    """Size of an input: a file's, or the sum of a folder input's files."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


#: Bookkeeping files that ``pack`` never reads as data, whatever their suffix.
NOT_DATA = {"generate.json", "label.json", "meta.json", "manifest.json"}


#: Compressions ASE reads transparently, for text formats inside a folder (``x.extxyz.gz``).
COMPRESSED = (".gz", ".bz2", ".xz")
#: VASP's structure files, known by name: they have no suffix.
VASP_NAMES = ("POSCAR", "CONTCAR")


def is_data_file(path: Path) -> bool:
    """Whether a file found in a folder given as input is read as structures: a data suffix
    (:data:`~matscale.data.readers.DATA_SUFFIXES`), one of ASE's text formats compressed, or
    VASP's POSCAR/CONTCAR (by name, with or without a suffix); never bookkeeping files."""
    if path.name in NOT_DATA:
        return False
    suffix = path.suffix.lower()
    if suffix in COMPRESSED:
        return Path(path.stem).suffix.lower() in (".extxyz", ".xyz", ".cif", ".vasp", ".pdb")
    return suffix in DATA_SUFFIXES or path.name.split(".")[0].upper() in VASP_NAMES


def collect_inputs(inputs: list[Path]) -> tuple[list[Path], dict[Path, str]]:
    """Data files under ``inputs`` and the default source of each: the name of the directory
    given on the command line (every file of a dataset is one source), or the file's stem
    when a file is given directly. Files of a folder that are not read (no structure format
    by their name) are listed in a note on stderr, not dropped without a word."""
    files: list[Path] = []
    sources: dict[Path, str] = {}
    for path in inputs:
        if path.is_dir() and not is_folder_format(path):
            found, ignored = [], []
            for f in sorted(path.rglob("*")):
                inside = f.relative_to(path).parts
                if (
                    "parts" in inside  # a store's own bookkeeping
                    or any(is_folder_format(Path(p)) for p in inside[:-1])
                    or any(p.startswith(".") for p in inside)  # hidden: .DS_Store, .git
                ):
                    continue
                if f.is_dir():  # an ADIOS2 NAME.bp folder is one input; others are searched
                    if is_folder_format(f):
                        found.append(f)
                    continue
                if is_data_file(f):
                    found.append(f)
                elif f.name not in NOT_DATA:
                    ignored.append(f)
            if ignored:
                names = ", ".join(str(f.relative_to(path)) for f in ignored[:5])
                more = f" and {len(ignored) - 5} more" if len(ignored) > 5 else ""
                print(f"note: {path}: {len(ignored)} file(s) not read, no structure format by "
                      f"their names: {names}{more}", file=sys.stderr)  # fmt: skip
            files += found
            sources.update({f: path.resolve().name for f in found})
        else:
            files.append(path)
            sources[path] = path.stem
    if not files:
        raise DataError("no data files found", file=", ".join(map(str, inputs)))
    return files, sources
