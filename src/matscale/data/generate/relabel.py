"""``matscale data label``: label structures one already has with a teacher potential.

Distillation, as the teacher source does for the crystals it builds, but for any geometries:
a dataset relabelled by SevenNet-0 or CHGNet becomes more data at the teacher's level of
theory (its source, its head). Labelling costs only the teacher's single points: ~5x the
atoms per second of the teacher source, whose relaxations and MD take most of its time.

The inputs (files or folders, found as ``matscale data pack`` finds them) are read in order by
this process and cut into chunks of ``chunk`` structures; worker processes label chunk ``k``
and write it as ``OUT/<teacher source>/chunk-<k>.extxyz`` (a temporary file and a rename).
Chunks on disk are kept, so a stopped run resumes; the folder's manifest names the inputs, the
teacher and the chunk size; a folder labelled from other inputs is refused, and inputs that grew
at the end (more chunk files of the same generator) extend it.

Every record says who labelled it: ``source`` is the teacher's, ``labelled_by`` the teacher
and its version; ``family`` is the input's, ``labelled_from`` the input's file and record.
Labels: energy (eV) and forces (eV/Å) always; stress (eV/Å³) where the input carried one, or,
for an input without labels, where it is periodic along all three axes (a slab or a cluster
in a box has a stress no one wants learnt). Structures the teacher cannot label are skipped
and counted by reason: an element outside its table, its own failure, labels that are not
finite or a force above :data:`~matscale.data.generate.teacher.MAX_FORCE`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from matscale.data.generate import teacher
from matscale.data.generate.run import quiet_worker
from matscale.data.generate.threads import single_threaded_children
from matscale.data.pack import collect_inputs
from matscale.data.readers import read_structures
from matscale.data.structure import Structure
from matscale.errors import DataError

#: Structures per chunk file (and per task of a worker): ~30 s of SevenNet-0 on one core for
#: 20-atom structures.
CHUNK = 200

#: The reason counted for a structure with an element outside the teacher's table.
OUTSIDE = "element outside the teacher's"


def label_files(
    inputs: list[Path],
    out: Path,
    who: teacher.Teacher,
    *,
    chunk: int = CHUNK,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Label every structure under ``inputs`` with ``who``, into ``out/<who.source>/``; return
    and save (``out/label.json``) a report: structures written now, skipped by reason,
    seconds."""
    if chunk < 1:
        raise DataError(f"chunk must be at least 1 structure, got {chunk}")
    missing = teacher.missing_package(who.source)
    if missing:
        raise DataError(
            f"{who.name} needs the package {missing}: pip install -c constraints.txt "
            "-e '.[teachers]'"
        )
    files, _ = collect_inputs(inputs)
    structures: list[Structure] = []
    for f in files:
        structures += read_structures(f)
    folder = out / who.source
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, files, who, chunk, len(structures))
    tasks = [
        (k, structures[start : start + chunk], folder / f"chunk-{k:05d}.extxyz")
        for k, start in enumerate(range(0, len(structures), chunk))
        if not (folder / f"chunk-{k:05d}.extxyz").exists()
    ]
    from matscale.progress import progress_bar

    started = time.perf_counter()
    written, skipped = 0, Counter[str]()
    bar = progress_bar(
        total=sum(len(t[1]) for t in tasks), desc="labelling", unit=" structures",
        enabled=progress,
    )  # fmt: skip
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    if tasks:
        with (
            single_threaded_children(),
            ProcessPoolExecutor(
                n_workers, mp_context=mp.get_context("spawn"), initializer=quiet_worker
            ) as pool,
        ):
            futures = {
                pool.submit(label_chunk, who, part, path): len(part) for _, part, path in tasks
            }
            for future in as_completed(futures):
                n, why = future.result()
                written += n
                skipped.update(why)
                bar.update(futures[future])
    bar.close()
    report = {
        "seconds": round(time.perf_counter() - started, 1),
        "teacher": who.labelled_by(),
        "structures": len(structures),
        "chunks": -(-len(structures) // chunk),
        "written_now": written,
        "skipped_now": dict(skipped),
    }
    (out / "label.json").write_text(json.dumps(report, indent=1))
    return report


def label_chunk(
    who: teacher.Teacher, structures: list[Structure], path: Path
) -> tuple[int, Counter[str]]:
    """Label ``structures`` with ``who`` and write those it could label to ``path`` (extxyz);
    return how many, and the others counted by reason."""
    import ase.io
    from ase import Atoms

    calc = teacher.calculator(who)
    labelled_by = who.labelled_by()
    allowed = set(teacher.TEACHER_Z)
    skipped: Counter[str] = Counter()
    out = []
    for s in structures:
        if not set(s.numbers.tolist()) <= allowed:
            skipped[OUTSIDE] += 1
            continue
        atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        reason = teacher.label(atoms, calc, stress=wants_stress(s))
        if reason:
            skipped[reason] += 1
            continue
        atoms.info.update(source=who.source, labelled_by=labelled_by, labelled_from=s.key)
        if s.family:
            atoms.info["family"] = s.family
        out.append(atoms)
    tmp = path.with_name(path.name + ".tmp")
    ase.io.write(tmp, out, format="extxyz")
    os.replace(tmp, path)
    return len(out), skipped


def wants_stress(s: Structure) -> bool:
    """Whether the teacher's stress is kept for ``s``: where its input carried a stress, or
    for an input without labels, where it is periodic along all three axes."""
    if s.stress is not None:
        return True
    unlabelled = s.energy is None and s.forces is None
    return unlabelled and bool(s.pbc.all())


def _check_manifest(
    folder: Path, files: list[Path], who: teacher.Teacher, chunk: int, structures: int
) -> None:
    """Record what ``folder`` is labelled from; refuse one labelled from other inputs, by
    another teacher or in other chunks (resuming keys on chunk files, which would otherwise
    be kept although they hold other structures). Inputs that grew at the end (more files
    after the old ones, as ``data generate`` adds them) extend the folder: its chunks hold the
    same structures, except the old last one when it was cut short, which is labelled again."""
    inputs = [[str(f), f.stat().st_size] for f in files]
    manifest = {
        "labelled_by": who.labelled_by(),
        "chunk": chunk,
        "inputs": inputs,
        "structures": structures,
    }
    path = folder / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        old_inputs = old.get("inputs", [])
        grown = old_inputs == inputs[: len(old_inputs)]
        differ = [k for k in ("labelled_by", "chunk") if old.get(k) != manifest[k]]
        if not grown:
            differ.append("inputs")
        if differ:
            raise DataError(
                f"holds structures labelled with other {', '.join(differ)} (the manifest "
                "differs); label into another --out, or delete the folder",
                file=str(folder),
            )
        before = int(old.get("structures", 0))
        if before < structures and before % chunk:
            (folder / f"chunk-{before // chunk:05d}.extxyz").unlink(missing_ok=True)
    path.write_text(json.dumps(manifest, indent=1))
