"""Crystal families the teacher source never makes, labelled by the same teacher: how a model
distilled from SevenNet-0 does on structure types it never saw.

The ``teacher-sevennet`` generator builds elemental lattices, rocksalt / zincblende / wurtzite /
fluorite / CsCl binaries, cubic perovskites and spinels (src/matscale/data/generate/teacher.py).
Ten of the prototypes here are none of those: rutile (TiO2, SnO2), corundum, α-quartz, pyrite,
2H-MoS2, NiAs, graphite, A15 and MgB2; two are new orderings of lattices it makes:
antifluorite Li2O (fluorite with cation and anion swapped) and the L2_1 Heusler Cu2MnAl (an
ordered bcc superstructure). Each is built at its experimental cell and taken in four
conditions, every one in a supercell of ≥ 24 atoms:

- ``experimental``: the experimental cell, rattled by 0.03 Å. Not the teacher's minimum:
  PBE-like potentials put most of these at a larger volume (SevenNet-0's stress on rutile
  TiO2 here is ~ -7 GPa), while the training crystals sit at the teacher's own volume;
- ``compressed``: 90 % of the volume, rattled by 0.05 Å (short contacts);
- ``expanded``: 108 % of the volume, rattled by 0.05 Å;
- ``hot``: rattled by 0.10 Å, independently per atom (roughly the displacements of MD near
  1,000 K, with more bond strain than correlated motion gives; large forces).

All are labelled by SevenNet-0 (energy, forces, stress; ``labelled_by`` in every record; the
source is ``unseen-crystals``, so the file never merges into the teacher's training source)
and written to ``benchmarks/results/unseen_crystals.extxyz`` (committed: a run reads it
instead of labelling again). A structure whose labels the teacher cannot give (a force over
50 eV/Å: graphite ``hot``) is left out and listed in the JSON. Each model in ``--models``
(model files or shipped names with a ``teacher-sevennet`` head, or ``chgnet`` for the second
teacher) is scored against those labels: energy MAE (meV/atom) and force MAE (meV/Å, over all
components) per condition and per prototype, its atoms/s (one structure per call), and, for a
matscale model, its own validation / test errors on the teacher's source beside them:

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
import torch
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
CONDITIONS = {"experimental": (1.0, 0.03), "compressed": (0.9, 0.05), "expanded": (1.08, 0.05),
              "hot": (1.0, 0.10)}  # fmt: skip
MIN_ATOMS = 24
#: Shortest supercell edge (Å) before the atom count is filled up.
MIN_LENGTH = 7.0
FILE = RESULTS / "unseen_crystals.extxyz"
#: The records' source: not the teacher's, so packing this file never feeds training.
SOURCE = "unseen-crystals"


def structures(seed: int = 0) -> list[Atoms]:
    """Every prototype in every condition (unlabelled), ``info`` naming both."""
    rng = np.random.default_rng(seed)
    out = []
    for name, (symbols, basis, group, cell) in PROTOTYPES.items():
        unit = crystal(symbols, basis, spacegroup=group, cellpar=list(cell))
        unit.info.clear()  # crystal()'s space group: no longer true once rattled
        unit.arrays.pop("spacegroup_kinds", None)
        reps = [max(1, int(np.ceil(MIN_LENGTH / n))) for n in unit.cell.lengths()]
        while len(unit) * int(np.prod(reps)) < MIN_ATOMS:
            reps[int(np.argmin(unit.cell.lengths() * reps))] += 1
        for condition, (volume, rattle) in CONDITIONS.items():
            atoms = unit.repeat(reps)
            atoms.set_cell(atoms.cell * volume ** (1 / 3), scale_atoms=True)
            atoms.rattle(stdev=rattle, rng=rng)
            atoms.info.update(family=condition, prototype=name, source=SOURCE)
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


def missing(atoms: list[Atoms]) -> list[str]:
    """``prototype/condition`` of every structure the file leaves out (the teacher failed)."""
    have = {(a.info["prototype"], a.info["family"]) for a in atoms}
    return [f"{p}/{c}" for p in PROTOTYPES for c in CONDITIONS if (p, c) not in have]


def predictions(
    model: str, atoms: list[Atoms]
) -> tuple[list[tuple[float, np.ndarray]], float, dict[str, float]]:
    """(energy eV, forces eV/Å [n, 3]) per structure and the atoms/s, one structure per call:
    a matscale model's ``teacher-sevennet`` head, or CHGNet (``chgnet``); and the model's own
    final metrics from its file (none for CHGNet)."""
    metrics: dict[str, float] = {}
    if model == "chgnet":
        from matscale.data.generate.teacher import CHGNET, calculator

        calc = calculator(CHGNET)
    else:
        from matscale.calc.ase_calculator import MatscaleCalculator
        from matscale.calc.model_file import load_potential
        from matscale.pretrained import model_file

        potential = load_potential(model_file(model))
        metrics = potential.info.get("metrics", {})
        calc = MatscaleCalculator(potential, head="teacher-sevennet")
    out = []
    started = time.perf_counter()
    for a in atoms:
        work = a.copy()
        work.calc = calc
        out.append((float(work.get_potential_energy()), np.array(work.get_forces())))
    return out, sum(len(a) for a in atoms) / (time.perf_counter() - started), metrics


def score(model: str, atoms: list[Atoms]) -> dict[str, Any]:
    """``model``'s energy (meV/atom) and force (meV/Å, all components pooled) MAE against the
    labels: over all structures, per condition (``condition:NAME``) and per prototype
    (``prototype:NAME``), with its atoms/s and (a matscale model) its own errors on the
    teacher's source from its model file."""
    predicted, atoms_per_s, metrics = predictions(model, atoms)
    groups: dict[str, list[int]] = {"all": list(range(len(atoms)))}
    for i, a in enumerate(atoms):
        groups.setdefault(f"condition:{a.info['family']}", []).append(i)
        groups.setdefault(f"prototype:{a.info['prototype']}", []).append(i)
    row: dict[str, Any] = {"atoms_per_s": atoms_per_s}
    for group, members in groups.items():
        de = [abs(predicted[i][0] - atoms[i].get_potential_energy()) / len(atoms[i])
              for i in members]  # fmt: skip
        df = np.concatenate([np.abs(predicted[i][1] - atoms[i].get_forces()).ravel()
                             for i in members])  # fmt: skip
        row[f"{group}/energy_mae_meV_per_atom"] = 1e3 * float(np.mean(de))
        row[f"{group}/forces_mae_meV_per_A"] = 1e3 * float(df.mean())
    if model != "chgnet":
        row["own_errors_on_teacher_source"] = {
            k: v for k, v in metrics.items() if "teacher-sevennet" in k
        }
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="model files, shipped names, chgnet")
    p.add_argument("--file", type=Path, default=FILE, help="labelled structures (made if absent)")
    args = p.parse_args()
    atoms = labelled(args.file)
    print(f"{len(atoms)} structures, {sum(len(a) for a in atoms)} atoms, in {args.file}; "
          f"left out: {', '.join(missing(atoms)) or 'none'}")  # fmt: skip
    rows = {m: score(m, atoms) for m in args.models}
    columns = ["all", *(f"condition:{c}" for c in CONDITIONS)]
    print(f"{'force MAE meV/Å':<28}" + "".join(f"{c.split(':')[-1]:>13}" for c in columns)
          + f"{'atoms/s':>10}")  # fmt: skip
    for m, row in rows.items():
        cells = [row[f"{c}/forces_mae_meV_per_A"] for c in columns]
        print(f"{m[:27]:<28}" + "".join(f"{v:>13.1f}" for v in cells)
              + f"{row['atoms_per_s']:>10.0f}")  # fmt: skip
    write_json(
        "unseen_crystals",
        {"file": str(args.file), "structures": len(atoms), "left_out": missing(atoms),
         "prototypes": list(PROTOTYPES), "conditions": CONDITIONS, "threads":
         torch.get_num_threads(), "models": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
