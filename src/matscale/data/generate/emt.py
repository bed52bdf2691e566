"""``emt-metals``: ASE's EMT on Al, Ni, Cu, Pd, Ag, Pt, Au and their fcc alloys.

Families (the ``family`` field, used later for held-out splits):

- ``bulk``: strained (±5 % normal, ±3 % shear) and rattled supercells of 4–48 atoms;
- ``vacancy``: the same with one or two atoms removed;
- ``surface``: (111), (100) and (110) slabs with vacuum, rattled (no stress label: the
  cell's volume includes vacuum);
- ``cluster``: free icosahedral, octahedral and decahedral particles of 13–55 atoms, rattled
  (not periodic, no stress);
- ``distorted``: bulk cells strained by up to ±10 % (normal) and ±6 % (shear) on top of the
  bulk strain and rattled by 0.12–0.22 Å: large forces and short contacts (down to
  ``MIN_CONTACT`` of the nearest-neighbour distance);
- ``md-<T>K``: snapshots of Langevin MD at 300, 600, 1000 and 1500 K.

The held-out protocol (``matscale.data.heldout``) keeps surfaces, clusters, distorted cells and
the 1500 K snapshots out of training to score extrapolation.

Labels: energy (eV), forces (eV/Å) and, for periodic bulk, stress (eV/Å³).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc100, fcc110, fcc111
from ase.calculators.emt import EMT
from ase.cluster import Decahedron, Icosahedron, Octahedron

from matscale.data.generate.geometry import langevin, strain_cell
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure

#: Seconds per structure on one core (measured here), for scheduling the slowest chunks first.
SECONDS_PER_STRUCTURE = 0.008
SOURCE = "emt-metals"
#: Bumped whenever the same seed would give other structures: chunks of another version are
#: not mixed into a folder (``run.generate`` checks it).
VERSION = 2
#: EMT's own fcc lattice constants (Å), for Vegard's-law alloys.
LATTICE: dict[str, float] = {
    "Al": 4.05,
    "Ni": 3.52,
    "Cu": 3.61,
    "Pd": 3.89,
    "Ag": 4.09,
    "Pt": 3.92,
    "Au": 4.08,
}
ELEMENTS = tuple(LATTICE)
TEMPERATURES_K = (300, 600, 1000, 1500)
#: Share of each family in a chunk; an MD snapshot costs ~5 force calls.
FAMILY_WEIGHTS = {
    "bulk": 0.3,
    "vacancy": 0.1,
    "surface": 0.15,
    "cluster": 0.1,
    "distorted": 0.1,
    "md": 0.25,
}
#: Shortest interatomic distance in a ``distorted`` cell, as a share of the nearest-neighbour
#: distance of its lattice: closer contacts are rattled again (EMT is not meant for fusion).
MIN_CONTACT = 0.7
#: (particle builder, its size arguments) for the ``cluster`` family: 13-55 atoms.
PARTICLES: tuple[tuple[Any, dict[str, int]], ...] = (
    (Icosahedron, {"noshells": 2}),
    (Icosahedron, {"noshells": 3}),
    (Octahedron, {"length": 3, "cutoff": 0}),
    (Octahedron, {"length": 4, "cutoff": 1}),
    (Octahedron, {"length": 5, "cutoff": 2}),
    (Decahedron, {"p": 2, "q": 2, "r": 0}),
    (Decahedron, {"p": 3, "q": 2, "r": 0}),
)
MD_STRIDE = 5  # MD steps between snapshots
CUBIC_REPEATS = ((2, 1, 1), (2, 2, 1), (2, 2, 2), (3, 2, 2))
PRIMITIVE_REPEATS = ((2, 2, 2), (3, 2, 2), (3, 3, 2), (3, 3, 3), (4, 3, 3))


def generate(n: int, rng: np.random.Generator, skipped: Counter[str]) -> list[Structure]:
    """Make ``n`` labelled structures, reproducibly from ``rng`` (EMT never fails: ``skipped``
    stays empty)."""
    counts = dict(
        zip(FAMILY_WEIGHTS, rng.multinomial(n, list(FAMILY_WEIGHTS.values())), strict=True)
    )
    out: list[Structure] = []
    for family in ("bulk", "vacancy"):
        for _ in range(counts[family]):
            atoms = _bulk(rng)
            if family == "vacancy":
                for _ in range(int(rng.integers(1, 3))):
                    del atoms[int(rng.integers(len(atoms)))]
            atoms.rattle(stdev=float(rng.uniform(0.02, 0.15)), rng=rng)
            out.append(_label(atoms, family, stress=True))
    out += [_label(_surface(rng), "surface", stress=False) for _ in range(counts["surface"])]
    out += [_label(_cluster(rng), "cluster", stress=False) for _ in range(counts["cluster"])]
    out += [_label(_distorted(rng), "distorted", stress=True) for _ in range(counts["distorted"])]
    remaining = counts["md"]
    while remaining > 0:  # several snapshots per trajectory
        batch = min(remaining, int(rng.integers(4, 13)))
        out += _md_snapshots(rng, batch)
        remaining -= batch
    return out


def _composition(rng: np.random.Generator, n_atoms: int) -> tuple[list[str], float]:
    """Random pure metal (30 %) or binary/ternary alloy; returns symbols and Vegard lattice."""
    k = 1 if rng.random() < 0.3 else int(rng.integers(2, 4))
    species = list(rng.choice(ELEMENTS, size=k, replace=False))
    fractions = rng.dirichlet(np.ones(k))
    symbols = list(rng.choice(species, size=n_atoms, p=fractions))
    a = float(np.mean([LATTICE[s] for s in symbols]))
    return symbols, a


def _bulk(rng: np.random.Generator) -> Atoms:
    # 8 to 48 atoms: cubic (4-atom) or primitive (1-atom) fcc cells, repeated
    cubic = rng.random() < 0.5
    choices = CUBIC_REPEATS if cubic else PRIMITIVE_REPEATS
    proto = bulk("Cu", "fcc", a=1.0, cubic=cubic).repeat(choices[int(rng.integers(len(choices)))])
    symbols, a = _composition(rng, len(proto))
    atoms = Atoms(symbols, positions=proto.positions * a, cell=proto.cell[:] * a, pbc=True)
    strain_cell(atoms, rng, normal=0.05, shear=0.03)
    return atoms


def _surface(rng: np.random.Generator) -> Atoms:
    build = [fcc111, fcc100, fcc110][int(rng.integers(3))]
    size = (int(rng.integers(2, 4)), int(rng.integers(2, 4)), int(rng.integers(3, 5)))
    slab = build("Cu", size=size, a=1.0, vacuum=0.0)
    symbols, a = _composition(rng, len(slab))
    slab = build("Cu", size=size, a=a, vacuum=float(rng.uniform(5.0, 8.0)))
    slab.set_chemical_symbols(symbols)
    slab.rattle(stdev=float(rng.uniform(0.02, 0.12)), rng=rng)
    return slab


def _cluster(rng: np.random.Generator) -> Atoms:
    build, size = PARTICLES[int(rng.integers(len(PARTICLES)))]
    particle = build("Cu", latticeconstant=1.0, **size)
    symbols, a = _composition(rng, len(particle))
    atoms = Atoms(symbols, positions=particle.positions * a, pbc=False)
    atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
    atoms.center(vacuum=6.0)
    atoms.rattle(stdev=float(rng.uniform(0.02, 0.12)), rng=rng)
    return atoms


def _distorted(rng: np.random.Generator) -> Atoms:
    atoms = _bulk(rng)
    strain_cell(atoms, rng, normal=0.10, shear=0.06)
    # the shortest nearest-neighbour distance the strain left, before rattling
    floor = MIN_CONTACT * _closest_pair(atoms)
    start = atoms.positions.copy()
    stdev = float(rng.uniform(0.12, 0.22))
    for _ in range(100):
        atoms.positions = start + rng.normal(scale=stdev, size=start.shape)
        if _closest_pair(atoms) >= floor:
            return atoms
        stdev *= 0.9  # a rare crowded draw: shake a little less
    raise RuntimeError("could not rattle a distorted cell without fusing atoms")


def _closest_pair(atoms: Atoms) -> float:
    d = atoms.get_all_distances(mic=True)
    return float(d[~np.eye(len(atoms), dtype=bool)].min())


def _md_snapshots(rng: np.random.Generator, count: int) -> list[Structure]:
    temperature = int(rng.choice(TEMPERATURES_K))
    atoms = _bulk(rng)
    atoms.calc = EMT()
    dyn = langevin(atoms, temperature, timestep_fs=2.0, rng=rng)
    dyn.run(20)  # leave the perfect lattice before the first snapshot
    out = []
    for _ in range(count):
        dyn.run(MD_STRIDE)
        out.append(_label(atoms.copy(), f"md-{temperature}K", stress=True))
    return out


def _label(atoms: Atoms, family: str, *, stress: bool) -> Structure:
    atoms.calc = EMT()
    atoms.info["family"] = family
    atoms.calc.calculate(atoms, ["energy", "forces"] + (["stress"] if stress else []))
    s = atoms_to_structure(atoms, source=SOURCE)
    if not stress:
        s.stress = None
    return s
