"""``xtb-molecules``: GFN2-xTB (through tblite) on organic molecules of ASE's G2 set.

Families:

- ``rattled``: a G2 molecule with Gaussian displacements of 0.02–0.10 Å;
- ``md-<T>K``: snapshots of Langevin MD at 300, 800 and 1500 K;
- ``dimer``: two rattled G2 molecules 2.5–5 Å apart (intermolecular interactions);
- ``large``: zigzag chains of 5–9 carbons (alkanes, with some hydrogens replaced by F or OH),
  17–33 atoms (24 on average): larger than any G2 molecule (at most 14 atoms), rattled
  0.02–0.06 Å.

The held-out protocol (``matscale.data.heldout``) keeps dimers, large molecules and the 1500 K
snapshots out of training.

Labels: energy (eV) and forces (eV/Å); molecules are not periodic, so no stress. An SCF that
does not converge is skipped and counted as ``scf``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.collections import g2

from matscale.data.generate.geometry import langevin
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure

#: Seconds per structure on one core (measured here), for scheduling the slowest chunks first.
SECONDS_PER_STRUCTURE = 0.006
SOURCE = "xtb-molecules"
#: Bumped whenever the same seed would give other structures (see ``emt.VERSION``).
VERSION = 2
#: G2 molecules with at least two atoms and only H, C, N, O, F (organic chemistry).
ORGANIC = {1, 6, 7, 8, 9}
MOLECULES = tuple(
    name for name in g2.names if len(g2[name]) > 1 and set(g2[name].numbers) <= ORGANIC
)
TEMPERATURES_K = (300, 800, 1500)
FAMILY_WEIGHTS = {"rattled": 0.42, "md": 0.33, "dimer": 0.18, "large": 0.07}
#: Carbons in a ``large`` chain, and the chance that a hydrogen becomes F or OH.
CHAIN_CARBONS = (5, 9)
SUBSTITUTION = 0.08
#: Bond lengths (Å) of the idealised chains: xTB relaxes them by a few hundredths.
BOND = {"CC": 1.53, "CH": 1.09, "CF": 1.35, "CO": 1.43, "OH": 0.96}
TETRAHEDRAL = np.deg2rad(109.47)
MD_STRIDE = 5


def generate(n: int, rng: np.random.Generator, skipped: Counter[str]) -> list[Structure]:
    """Make up to ``n`` labelled structures; failed SCFs are counted in ``skipped``."""
    counts = dict(
        zip(FAMILY_WEIGHTS, rng.multinomial(n, list(FAMILY_WEIGHTS.values())), strict=True)
    )
    out: list[Structure] = []
    for _ in range(counts["rattled"]):
        atoms = _molecule(rng)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.10)), rng=rng)
        _append(out, atoms, "rattled", skipped)
    for _ in range(counts["dimer"]):
        _append(out, _dimer(rng), "dimer", skipped)
    for _ in range(counts["large"]):
        atoms = _chain(rng)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.06)), rng=rng)
        _append(out, atoms, "large", skipped)
    remaining = counts["md"]
    while remaining > 0:
        batch = min(remaining, int(rng.integers(4, 13)))
        out += _md_snapshots(rng, batch, skipped)
        remaining -= batch
    return out


def _calculator() -> object:
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0, max_iterations=250)


def _molecule(rng: np.random.Generator) -> Atoms:
    atoms = molecule(str(rng.choice(MOLECULES)))
    atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
    return atoms


def _dimer(rng: np.random.Generator) -> Atoms:
    a, b = _molecule(rng), _molecule(rng)
    a.rattle(stdev=0.05, rng=rng)
    b.rattle(stdev=0.05, rng=rng)
    # place b along a random direction so that the closest contact is 2.5-5 Å
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    b.translate(a.positions.mean(0) - b.positions.mean(0))
    gap = float(rng.uniform(2.5, 5.0))
    step = 0.1
    while _closest(a, b) < gap:
        b.translate(step * direction)
    return a + b


def _chain(rng: np.random.Generator) -> Atoms:
    """A zigzag alkane chain of ``CHAIN_CARBONS`` carbons in ideal tetrahedral geometry, some
    hydrogens replaced by F or OH, randomly oriented."""
    n = int(rng.integers(CHAIN_CARBONS[0], CHAIN_CARBONS[1] + 1))
    half = TETRAHEDRAL / 2
    # backbone in the xy plane, with one virtual carbon beyond each end (where the terminal
    # carbons' in-plane hydrogen points)
    k = np.arange(-1, n + 1)
    backbone = np.stack(
        [k * BOND["CC"] * np.sin(half), (k % 2) * BOND["CC"] * np.cos(half), 0 * k], axis=1
    )
    symbols, positions = ["C"] * n, list(backbone[1:-1])
    z = np.array([0.0, 0.0, 1.0])
    for i in range(1, n + 1):
        c = backbone[i]
        before, after = backbone[i - 1] - c, backbone[i + 1] - c
        away = -(before + after) / np.linalg.norm(before + after)
        bonds = [away * np.cos(half) + z * np.sin(half), away * np.cos(half) - z * np.sin(half)]
        if i == 1:
            bonds.append(before / np.linalg.norm(before))
        if i == n:
            bonds.append(after / np.linalg.norm(after))
        for u in bonds:
            roll = rng.random()
            if roll < SUBSTITUTION:
                symbols.append("F")
                positions.append(c + BOND["CF"] * u)
            elif roll < 2 * SUBSTITUTION:
                o = c + BOND["CO"] * u
                # the hydroxyl hydrogen at the tetrahedral angle, turned off the C-O axis
                side = np.cross(u, z if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0]))
                side /= np.linalg.norm(side)
                h = o + BOND["OH"] * (-np.cos(TETRAHEDRAL) * u + np.sin(TETRAHEDRAL) * side)
                symbols += ["O", "H"]
                positions += [o, h]
            else:
                symbols.append("H")
                positions.append(c + BOND["CH"] * u)
    atoms = Atoms(symbols, positions=np.array(positions))
    atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
    return atoms


def _closest(a: Atoms, b: Atoms) -> float:
    return float(np.min(np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1)))


def _md_snapshots(rng: np.random.Generator, count: int, skipped: Counter[str]) -> list[Structure]:
    temperature = int(rng.choice(TEMPERATURES_K))
    atoms = _molecule(rng)
    atoms.calc = _calculator()
    dyn = langevin(atoms, temperature, timestep_fs=0.5, rng=rng)
    out: list[Structure] = []
    attempted = 0
    try:
        dyn.run(20)
        for _ in range(count):
            dyn.run(MD_STRIDE)
            attempted += 1  # _append counts its own failures
            _append(out, atoms.copy(), f"md-{temperature}K", skipped)
    except Exception:  # tblite raises a plain exception when the SCF fails mid-trajectory
        skipped["scf"] += count - attempted  # the snapshots the trajectory never reached
    return out


def _append(out: list[Structure], atoms: Atoms, family: str, skipped: Counter[str]) -> None:
    atoms.calc = _calculator()
    atoms.info["family"] = family
    try:
        atoms.calc.calculate(atoms, ["energy", "forces"])
    except Exception:  # tblite reports a failed SCF as a bare exception
        skipped["scf"] += 1
        return
    out.append(atoms_to_structure(atoms, source=SOURCE))
