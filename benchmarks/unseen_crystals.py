"""Crystal families the teacher source never makes, labelled by the same teacher: how a model
distilled from SevenNet-0 does on structure types it never saw.

The ``teacher-sevennet`` generator builds elemental lattices, rocksalt / zincblende / wurtzite /
fluorite / CsCl binaries, cubic perovskites and spinels (src/matscale/data/generate/teacher.py).
None of the prototypes here is among them: rutile, corundum, α-quartz, pyrite, 2H-MoS2, NiAs,
graphite, A15, MgB2, the L2_1 Heusler and antifluorite, at their experimental cells. Each is
taken in four conditions, every one in a supercell of ≥ 24 atoms:

- ``near``: the experimental cell, rattled by 0.03 Å;
- ``compressed``: 90 % of the volume, rattled by 0.05 Å (short contacts);
- ``expanded``: 108 % of the volume, rattled by 0.05 Å;
- ``hot``: rattled by 0.10 Å (the displacements of MD at ~1,500 K; large forces).

All are labelled by SevenNet-0 (energy, forces, stress; ``labelled_by`` in every record) and
written to ``benchmarks/results/unseen_crystals.extxyz`` (committed: a run reads it instead of
labelling again). Each model in ``--models`` (model files or shipped names; ``chgnet`` for the
second teacher) is scored against those labels per condition, beside its own test errors on
the teacher's source where its model file has them:

    .venv/bin/python benchmarks/unseen_crystals.py --models matscale-foundation-v1 chgnet

Writes ``benchmarks/results/unseen_crystals.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.spacegroup import crystal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json

#: name -> (symbols of the Wyckoff sites, their positions, space group, cell a b c α β γ in
#: Å and degrees): experimental structures (ICSD / Wyckoff's tables), none of them a prototype
#: of the teacher generator (positions in the International Tables' origin, as ASE takes them).
PROTOTYPES: dict[str, tuple[list[str], list[tuple[float, float, float]], int, tuple]] = {
    "rutile-TiO2": (["Ti", "O"], [(0, 0, 0), (0.3048, 0.3048, 0)], 136,
                    (4.594, 4.594, 2.959, 90, 90, 90)),
    "rutile-SnO2": (["Sn", "O"], [(0, 0, 0), (0.307, 0.307, 0)], 136,
                    (4.737, 4.737, 3.186, 90, 90, 90)),
    "corundum-Al2O3": (["Al", "O"], [(0, 0, 0.3522), (0.3064, 0, 0.25)], 167,
                       (4.759, 4.759, 12.991, 90, 90, 120)),
    "quartz-SiO2": (["Si", "O"], [(0.4697, 0, 2 / 3), (0.4135, 0.2669, 0.7858)], 154,
                    (4.913, 4.913, 5.405, 90, 90, 120)),
    "pyrite-FeS2": (["Fe", "S"], [(0, 0, 0), (0.385, 0.385, 0.385)], 205,
                    (5.417, 5.417, 5.417, 90, 90, 90)),
    "2H-MoS2": (["Mo", "S"], [(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)], 194,
                (3.160, 3.160, 12.294, 90, 90, 120)),
    "NiAs": (["Ni", "As"], [(0, 0, 0), (1 / 3, 2 / 3, 0.25)], 194,
             (3.619, 3.619, 5.034, 90, 90, 120)),
    "graphite": (["C", "C"], [(0, 0, 0.25), (1 / 3, 2 / 3, 0.25)], 194,
                 (2.464, 2.464, 6.711, 90, 90, 120)),
    "A15-Cr3Si": (["Si", "Cr"], [(0, 0, 0), (0.25, 0, 0.5)], 223,
                  (4.558, 4.558, 4.558, 90, 90, 90)),
    "MgB2": (["Mg", "B"], [(0, 0, 0), (1 / 3, 2 / 3, 0.5)], 191,
             (3.086, 3.086, 3.524, 90, 90, 120)),
    "heusler-Cu2MnAl": (["Cu", "Mn", "Al"], [(0.25, 0.25, 0.25), (0, 0, 0), (0.5, 0.5, 0.5)],
                        225, (5.95, 5.95, 5.95, 90, 90, 90)),
    "antifluorite-Li2O": (["Li", "O"], [(0.25, 0.25, 0.25), (0, 0, 0)], 225,
                          (4.611, 4.611, 4.611, 90, 90, 90)),
}  # fmt: skip
#: condition -> (volume scale, rattle Å).
CONDITIONS = {"near": (1.0, 0.03), "compressed": (0.9, 0.05), "expanded": (1.08, 0.05),
              "hot": (1.0, 0.10)}  # fmt: skip
MIN_ATOMS = 24
#: Shortest supercell edge (Å) before the atom count is filled up.
MIN_LENGTH = 7.0
FILE = RESULTS / "unseen_crystals.extxyz"


def structures(seed: int = 0) -> list[Atoms]:
    """Every prototype in every condition (unlabelled), ``info`` naming both."""
    rng = np.random.default_rng(seed)
    out = []
    for name, (symbols, basis, group, cell) in PROTOTYPES.items():
        unit = crystal(symbols, basis, spacegroup=group, cellpar=list(cell))
        reps = [max(1, int(np.ceil(MIN_LENGTH / n))) for n in unit.cell.lengths()]
        while len(unit) * int(np.prod(reps)) < MIN_ATOMS:
            reps[int(np.argmin(unit.cell.lengths() * reps))] += 1
        for condition, (volume, rattle) in CONDITIONS.items():
            atoms = unit.repeat(reps)
            atoms.set_cell(atoms.cell * volume ** (1 / 3), scale_atoms=True)
            atoms.rattle(stdev=rattle, rng=rng)
            atoms.info.update(family=f"{condition}", prototype=name, source="teacher-sevennet")
            out.append(atoms)
    return out


def labelled(path: Path) -> list[Atoms]:
    """The structures labelled by SevenNet-0, read from ``path`` or made and written there."""
    import ase.io

    if path.is_file():
        return list(ase.io.read(path, ":"))
    from matscale.data.generate.teacher import SEVENNET, calculator, label

    calc, who = calculator(SEVENNET), SEVENNET.labelled_by()
    out = []
    for atoms in structures():
        reason = label(atoms, calc, stress=True)
        if reason:
            print(f"{atoms.info['prototype']} {atoms.info['family']}: skipped ({reason})")
            continue
        atoms.info["labelled_by"] = who
        out.append(atoms)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, out, format="extxyz")
    return list(ase.io.read(path, ":"))


def score(model: str, path: Path) -> dict[str, Any]:
    """``model``'s errors on the labelled file, per condition and per prototype (a matscale
    model through ``matscale eval``'s code; ``chgnet`` through its ASE calculator)."""
    started = time.perf_counter()
    if model == "chgnet":
        metrics = _score_teacher(path)
    else:
        from matscale.calc.evaluation import evaluate_files
        from matscale.calc.model_file import load_potential
        from matscale.pretrained import model_file

        potential = load_potential(model_file(model))
        metrics = evaluate_files(potential, [path], None, head="teacher-sevennet", progress=False)
        metrics["test_on_teacher_source"] = {
            k: v for k, v in potential.info.get("metrics", {}).items() if "teacher-sevennet" in k
        }
    metrics["seconds"] = time.perf_counter() - started
    return metrics


def _score_teacher(path: Path) -> dict[str, Any]:
    """CHGNet against SevenNet-0's labels: how far the two teachers are apart here."""
    import ase.io

    from matscale.data.generate.teacher import CHGNET, calculator

    calc = calculator(CHGNET)
    per: dict[str, list[float]] = {}
    for atoms in ase.io.read(path, ":"):
        ref = atoms.get_forces().copy()
        atoms.calc = calc
        err = np.abs(atoms.get_forces() - ref).mean() * 1000
        per.setdefault(f"family:teacher-sevennet/{atoms.info['family']}", []).append(err)
        per.setdefault("all", []).append(err)
    return {f"{k}/forces_mae_meV_per_A": float(np.mean(v)) for k, v in per.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="model files, shipped names, chgnet")
    p.add_argument("--file", type=Path, default=FILE, help="labelled structures (made if absent)")
    args = p.parse_args()
    atoms = labelled(args.file)
    print(f"{len(atoms)} structures, {sum(len(a) for a in atoms)} atoms, in {args.file}")
    rows = {m: score(m, args.file) for m in args.models}
    conditions = ["all", *(f"family:teacher-sevennet/{c}" for c in CONDITIONS)]
    print(f"{'model':<28}" + "".join(f"{c.split('/')[-1]:>12}" for c in conditions))
    for m, metrics in rows.items():
        cells = [metrics.get(f"{c}/forces_mae_meV_per_A", float("nan")) for c in conditions]
        print(f"{m[:27]:<28}" + "".join(f"{v:>12.1f}" for v in cells))
    print("force MAE (meV/Å) against SevenNet-0's labels")
    write_json(
        "unseen_crystals",
        {"file": str(args.file), "structures": len(atoms),
         "prototypes": list(PROTOTYPES), "conditions": CONDITIONS, "models": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
