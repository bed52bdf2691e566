"""``matscale data generate``: make the named sources in parallel, reproducibly, resumably.

Each source is cut into chunks of ``chunk`` structures; chunk ``k`` of source ``s`` is made
from the seed sequence ``(seed, crc32(s), k)``, so the data do not depend on the number of
workers, and written as ``OUT/<source>/chunk-<k>.extxyz`` (through a temporary file and a
rename). Chunks already on disk are kept, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.generate import emt, teacher, xtb, xtb_main_group, xtb_solids
from matscale.data.generate.threads import single_threaded_children
from matscale.data.store import META
from matscale.data.structure import Structure

Generator = Callable[[int, np.random.Generator, Counter[str]], list[Structure]]

#: The one explicit table of sources ``matscale data generate`` knows.
GENERATORS: dict[str, Generator] = {
    emt.SOURCE: emt.generate,
    xtb.SOURCE: xtb.generate,
    xtb_main_group.SOURCE: xtb_main_group.generate,
    xtb_solids.SOURCE: xtb_solids.generate,
    **{t.source: teacher.generator(t) for t in teacher.TEACHERS},
}

#: Version of each generator: a folder's chunks all come from one version.
VERSIONS: dict[str, int] = {
    emt.SOURCE: emt.VERSION,
    xtb.SOURCE: xtb.VERSION,
    xtb_main_group.SOURCE: xtb_main_group.VERSION,
    xtb_solids.SOURCE: xtb_solids.VERSION,
    **{t.source: teacher.VERSION for t in teacher.TEACHERS},
}

#: Seconds per structure of each source on one core, to start the slowest chunks first.
COST: dict[str, float] = {
    emt.SOURCE: emt.SECONDS_PER_STRUCTURE,
    xtb.SOURCE: xtb.SECONDS_PER_STRUCTURE,
    xtb_main_group.SOURCE: xtb_main_group.SECONDS_PER_STRUCTURE,
    xtb_solids.SOURCE: xtb_solids.SECONDS_PER_STRUCTURE,
    **{t.source: teacher.SECONDS_PER_STRUCTURE for t in teacher.TEACHERS},
}

#: Structures per source for each preset. ``default`` takes ~5 minutes on 2 cores (GFN1-xTB
#: on solids costs ~0.2 s per cell, 25x EMT, hence its small share). ``teacher`` adds crystals
#: across 84 elements labelled by SevenNet-0 (needs the ``teachers`` extra; ~1.4 s each on one
#: core with the volume scans of version 3, 21 atoms on average: 20,000 take ~4 h on 2
#: cores). ``foundation`` is the pretraining data of the shipped model: ``default`` (its
#: chunks are reused when generated into the same folder), the teacher's crystals and GFN2-xTB
#: molecules with Si, P, S, Cl and Br.
PRESETS: dict[str, dict[str, int]] = {
    "default": {emt.SOURCE: 36_000, xtb.SOURCE: 24_000, xtb_solids.SOURCE: 800},
    "small": {emt.SOURCE: 240, xtb.SOURCE: 160, xtb_solids.SOURCE: 24},
    "teacher": {teacher.SEVENNET.source: 20_000},
    "foundation": {
        emt.SOURCE: 36_000,
        xtb.SOURCE: 24_000,
        xtb_solids.SOURCE: 800,
        xtb_main_group.SOURCE: 12_000,
        teacher.SEVENNET.source: 20_000,
    },
}


@dataclass(kw_only=True)
class GenerateConfig:
    """What ``matscale data generate`` makes."""

    sizes: dict[str, int] = field(default_factory=lambda: dict(PRESETS["default"]))
    """Structures to make per source name."""
    seed: int = 0
    """Seed of every random choice; the same seed gives the same files."""
    chunk: int = 400
    """Structures per output file (and per task of a worker); expensive sources use fewer,
    so that a chunk takes at most ~30 s (see :func:`chunk_size`)."""
    workers: int = 0
    """Worker processes; 0 uses every core."""


def generate(out: Path, config: GenerateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Make every source of ``config`` under ``out``; return and save a report
    (``out/generate.json``): structures written and skipped (by reason) per source, seconds."""
    unknown = set(config.sizes) - set(GENERATORS)
    if unknown:
        raise ValueError(f"unknown sources {sorted(unknown)}; known: {sorted(GENERATORS)}")
    if config.seed < 0:  # numpy's seed sequences take none: refused before any folder is made
        raise ValueError(f"--seed must be a non-negative integer, got {config.seed}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder: choose another --out")
    if (out / META).exists():
        raise ValueError(
            f"{out} is a packed store: generate into another folder, then `matscale data pack` it"
        )
    for source, total in config.sizes.items():
        package = teacher.missing_package(source) if total else None
        if package:
            raise ValueError(
                f"source {source} is labelled by a teacher potential from the package {package}, "
                "which is not installed: pip install -c constraints.txt -e '.[teachers]'"
            )
    tasks = []
    for source, total in config.sizes.items():
        if total == 0:  # `--size SOURCE=0` leaves that source (and its folder) alone
            continue
        (out / source).mkdir(parents=True, exist_ok=True)
        size = chunk_size(source, config.chunk)
        manifest = {
            "generator": VERSIONS[source],
            "seed": config.seed,
            "chunk": size,
            "structures": total,
        }
        _check_manifest(out / source, manifest)
        for k, start in enumerate(range(0, total, size)):
            path = out / source / f"chunk-{k:05d}.extxyz"
            if not path.exists():
                tasks.append((source, k, min(size, total - start), config.seed, path))
    # Longest chunks first, so that no worker is left with a slow chunk at the end.
    tasks.sort(key=lambda t: -COST.get(t[0], 0.01) * t[2])
    started = time.perf_counter()
    written: Counter[str] = Counter()
    skipped: dict[str, Counter[str]] = {s: Counter() for s in config.sizes}
    workers = max(1, min(config.workers or os.cpu_count() or 1, len(tasks)))
    from matscale.progress import progress_bar

    # The bar counts estimated core-seconds, not structures: the slowest chunks go first, and a
    # bar in structures/s would open with an estimate of hours for minutes of work. It shows no
    # rate: estimated core-seconds per second says nothing a user can act on.
    work = [COST.get(t[0], 0.01) * t[2] for t in tasks]
    bar = progress_bar(
        total=round(sum(work)),
        desc="generating",
        unit=" core-s (est.)",
        enabled=progress,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}{postfix}]",
    )
    structures = sum(t[2] for t in tasks)
    done_work = 0.0
    with (
        single_threaded_children(),
        ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=quiet_worker
        ) as pool,
    ):
        futures = {
            pool.submit(_make_chunk, *task): (task, w) for task, w in zip(tasks, work, strict=True)
        }
        for future in as_completed(futures):
            (source, *_), w = futures[future]
            n_written, skip = future.result()
            written[source] += n_written
            skipped[source].update(skip)
            bar.set_postfix_str(_made_so_far(written, skipped, structures), refresh=False)
            bar.update(round(done_work + w) - round(done_work))  # whole core-seconds, no drift
            done_work += w
    bar.close()
    report = {
        "seconds": round(time.perf_counter() - started, 1),
        "config": {"sizes": config.sizes, "seed": config.seed, "chunk": config.chunk},
        "written_now": dict(written),
        "skipped_now": {s: dict(c) for s, c in skipped.items()},
        "files": {s: -(-n // chunk_size(s, config.chunk)) for s, n in config.sizes.items()},
    }
    (out / "generate.json").write_text(json.dumps(report, indent=1))
    return report


def _made_so_far(written: Counter[str], skipped: dict[str, Counter[str]], structures: int) -> str:
    """The bar's postfix: structures written of those asked for, and those skipped (a
    generator drops a structure its teacher cannot label; the report gives the reasons)."""
    n_skipped = sum(sum(c.values()) for c in skipped.values())
    text = f"{sum(written.values()):,}/{structures:,} structures written"
    return f"{text}, {n_skipped:,} skipped" if n_skipped else text


def _check_manifest(folder: Path, manifest: dict[str, int]) -> None:
    """Record what a source folder holds; refuse to mix chunks of another generator version,
    seed or chunk size into it (resuming keys on chunk files, which would otherwise be
    silently reused). A larger total extends the folder: chunk ``k`` does not depend on the
    total, except the old last chunk when it was cut short, which is made again in full."""
    path = folder / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("generator", 1)  # folders made before versions were recorded
        fixed = {k: v for k, v in manifest.items() if k != "structures"}
        if any(old.get(k) != v for k, v in fixed.items()):
            what = ", ".join(
                f"{k} {old.get(k)} (now {v})" for k, v in fixed.items() if old.get(k) != v
            )
            raise ValueError(
                f"{folder} holds chunks made with another {what}; generate elsewhere (--out, or "
                "--data-dir for the demo) or delete the folder"
            )
        before, now = old["structures"], manifest["structures"]
        if now < before:
            raise ValueError(
                f"{folder} holds {before:,} structures, more than the {now:,} asked for: "
                "generate elsewhere or delete the folder (its chunks would all be read)"
            )
        if now > before and before % manifest["chunk"]:
            # the old last chunk was cut to the old total: remake it in full
            (folder / f"chunk-{before // manifest['chunk']:05d}.extxyz").unlink(missing_ok=True)
    path.write_text(json.dumps(manifest))


#: Longest a chunk should take on one core (s): keeps progress visible and the load balanced.
CHUNK_SECONDS = 30.0


def chunk_size(source: str, chunk: int) -> int:
    """Structures per chunk of ``source``: ``chunk``, or fewer for an expensive calculator."""
    return max(1, min(chunk, int(CHUNK_SECONDS / COST.get(source, 0.01))))


def quiet_worker() -> None:
    """Initialiser of a generating or labelling worker process: no repeated warnings, and
    the worker ends with its parent."""
    import warnings

    warnings.simplefilter("ignore")  # ASE's deprecation notes, once per worker, say nothing new
    end_with_parent()


def end_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies: a worker must not outlive
    a stopped ``matscale data generate`` (an orphaned one labelled on for an hour, taking a
    core from everything else). Nothing happens on other systems."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def chunk_rng(seed: int, source: str, k: int) -> np.random.Generator:
    """The random generator of chunk ``k`` of ``source``: independent of workers and order."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(source.encode()), k]))


def _make_chunk(source: str, k: int, n: int, seed: int, path: Path) -> tuple[int, Counter[str]]:
    import ase.io

    skipped: Counter[str] = Counter()
    structures = GENERATORS[source](n, chunk_rng(seed, source, k), skipped)
    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(tmp, [s.to_atoms() for s in structures], format="extxyz")
    os.replace(tmp, path)
    return len(structures), skipped
