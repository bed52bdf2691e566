"""``xtb-solids``: GFN1-xTB (through tblite) on periodic covalent and ionic solids.

Prototypes (experimental lattice constants, Å): diamond C, Si, Ge; zincblende SiC, BN, AlP,
GaAs; rocksalt LiF, NaCl, KCl, MgO, CaO; fluorite CaF2. Families:

- ``bulk``: conventional or primitive cells, ±4 % normal and ±2 % shear strain, rattled
  0.02–0.10 Å;
- ``strained``: the same with ±10 % normal strain (far from equilibrium, large stresses).

Labels: energy (eV), forces (eV/Å), stress (eV/Å³). An SCF that fails is skipped (``scf``).
About 0.1–0.3 s per structure on one core, so this source is small in the default preset.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase import Atoms
from ase.build import bulk

from matscale.data.generate.geometry import strain_cell
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure

#: Seconds per structure on one core (measured here), for scheduling the slowest chunks first.
SECONDS_PER_STRUCTURE = 0.2
SOURCE = "xtb-solids"
#: Bumped whenever the same seed would give other structures (see ``emt.VERSION``).
VERSION = 1
#: (formula, crystal structure, lattice constant in Å)
PROTOTYPES: tuple[tuple[str, str, float], ...] = (
    ("C", "diamond", 3.567), ("Si", "diamond", 5.431), ("Ge", "diamond", 5.658),
    ("SiC", "zincblende", 4.360), ("BN", "zincblende", 3.615), ("AlP", "zincblende", 5.463),
    ("GaAs", "zincblende", 5.653), ("LiF", "rocksalt", 4.027), ("NaCl", "rocksalt", 5.640),
    ("KCl", "rocksalt", 6.293), ("MgO", "rocksalt", 4.212), ("CaO", "rocksalt", 4.811),
    ("CaF2", "fluorite", 5.463),
)  # fmt: skip
FAMILY_WEIGHTS = {"bulk": 0.7, "strained": 0.3}


def generate(n: int, rng: np.random.Generator, skipped: Counter[str]) -> list[Structure]:
    """Make up to ``n`` labelled structures; failed SCFs are counted in ``skipped``."""
    from tblite.ase import TBLite

    counts = dict(
        zip(FAMILY_WEIGHTS, rng.multinomial(n, list(FAMILY_WEIGHTS.values())), strict=True)
    )
    out: list[Structure] = []
    for family, count in counts.items():
        for _ in range(count):
            atoms = _cell(rng, normal=0.10 if family == "strained" else 0.04)
            atoms.rattle(stdev=float(rng.uniform(0.02, 0.10)), rng=rng)
            atoms.info["family"] = family
            atoms.calc = TBLite(method="GFN1-xTB", verbosity=0, max_iterations=250)
            try:
                atoms.calc.calculate(atoms, ["energy", "forces", "stress"])
            except Exception:  # tblite reports a failed SCF as a bare exception
                skipped["scf"] += 1
                continue
            out.append(atoms_to_structure(atoms, source=SOURCE))
    return out


def _cell(rng: np.random.Generator, normal: float) -> Atoms:
    formula, kind, a = PROTOTYPES[int(rng.integers(len(PROTOTYPES)))]
    if rng.random() < 0.5:
        atoms = bulk(formula, kind, a=a, cubic=True)  # 8 atoms (12 for fluorite)
    else:
        atoms = bulk(formula, kind, a=a).repeat((2, 2, 1))  # 8 atoms (12 for fluorite)
    strain_cell(atoms, rng, normal=normal, shear=0.02)
    return atoms
