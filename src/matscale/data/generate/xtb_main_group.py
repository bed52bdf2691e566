"""``xtb-main-group``: GFN2-xTB (through tblite) on molecules of H, C, N, O, F, Si, P, S, Cl, Br.

``xtb-molecules`` covers organic chemistry (H C N O F) and stays as it is: the demo and the
published comparisons were made with it. This source adds the main-group elements a
foundation model's molecule head needs, and conformers:

- molecules drawn from three pools of equal chance: the G2 set's organic molecules, its
  molecules with Si, P, S or Cl (and their bromine analogues: every Cl swapped for Br), and
  :func:`substituted` centres (Si, P, S, C, N with H, F, Cl, Br, CH3 or OH around them, e.g.
  PBr3, SiH2Cl2, P(CH3)3, CH3SCl);
- ``rattled``: such a molecule with Gaussian displacements of 0.02–0.10 Å;
- ``conformer``: chains of 3–5 carbons with F, Cl, Br, OH or SH groups and random gauche
  torsions, rattled 0.02–0.06 Å;
- ``md-<T>K``: snapshots of Langevin MD at 300, 800 and 1500 K;
- ``dimer``: two rattled molecules 2.5–5 Å apart;
- ``large``: chains of 10–13 carbons (at least 32 atoms) with the same groups and torsions:
  larger than any molecule in training (at most 29 atoms).

The held-out protocol keeps ``dimer``, ``large`` and ``md-1500K`` out of training, as for
``xtb-molecules``. Labels: energy (eV) and forces (eV/Å); an SCF that does not converge is
skipped and counted as ``scf``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from ase.data import atomic_numbers, covalent_radii

from matscale.data.generate import xtb
from matscale.data.structure import Structure

#: Seconds per structure on one core (measured here), for scheduling the slowest chunks first.
SECONDS_PER_STRUCTURE = 0.02
SOURCE = "xtb-main-group"
#: Bumped whenever the same seed would give other structures (see ``emt.VERSION``).
VERSION = 1
#: The elements this source covers (atomic numbers).
ELEMENTS = frozenset(
    atomic_numbers[s] for s in ("H", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br")
)
#: Beyond organic chemistry: the elements every molecule of the second and third pools holds.
MAIN_GROUP = frozenset(atomic_numbers[s] for s in ("Si", "P", "S", "Cl", "Br"))
_G2 = [name for name in g2.names if len(g2[name]) > 1 and set(g2[name].numbers) <= ELEMENTS]
ORGANIC_MOLECULES = tuple(n for n in _G2 if not set(g2[n].numbers) & MAIN_GROUP)
MAIN_GROUP_MOLECULES = tuple(n for n in _G2 if set(g2[n].numbers) & MAIN_GROUP)
CHLORINE = atomic_numbers["Cl"]
BROMINE = atomic_numbers["Br"]

FAMILY_WEIGHTS = {"rattled": 0.35, "conformer": 0.15, "md": 0.30, "dimer": 0.13, "large": 0.07}
#: Carbons of the training conformers and of the held-out large chains: a chain of n carbons
#: has 3n + 2 atoms, plus at most 2n + 2 hydroxyl/thiol hydrogens (5 carbons: ≤ 29 atoms;
#: 10 carbons: ≥ 32).
CONFORMER_CARBONS = (3, 5)
LARGE_CARBONS = (10, 13)
#: Chance of each group replacing a hydrogen of a chain.
CHAIN_GROUPS = {"F": 0.05, "Cl": 0.05, "Br": 0.05, "OH": 0.05, "SH": 0.05}

#: Centres of :func:`substituted` molecules and their valence (bonds on tetrahedral directions;
#: a lone pair takes each of the others).
CENTRES = {"Si": 4, "P": 3, "S": 2, "C": 4, "N": 3}
LIGANDS = ("H", "F", "Cl", "Br", "CH3", "OH")
TETRAHEDRON = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)


def generate(n: int, rng: np.random.Generator, skipped: Counter[str]) -> list[Structure]:
    """Make up to ``n`` labelled structures; failed SCFs are counted in ``skipped``."""
    counts = dict(
        zip(FAMILY_WEIGHTS, rng.multinomial(n, list(FAMILY_WEIGHTS.values())), strict=True)
    )
    out: list[Structure] = []
    for _ in range(counts["rattled"]):
        atoms = pick(rng)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.10)), rng=rng)
        xtb.label(out, atoms, "rattled", skipped, SOURCE)
    for family, carbons in (("conformer", CONFORMER_CARBONS), ("large", LARGE_CARBONS)):
        for _ in range(counts[family]):
            size = int(rng.integers(carbons[0], carbons[1] + 1))
            atoms = xtb.chain(rng, size, CHAIN_GROUPS, conformer=True)
            atoms.rattle(stdev=float(rng.uniform(0.02, 0.06)), rng=rng)
            xtb.label(out, atoms, family, skipped, SOURCE)
    for _ in range(counts["dimer"]):
        xtb.label(out, xtb.dimer(rng, pick), "dimer", skipped, SOURCE)
    remaining = counts["md"]
    while remaining > 0:
        batch = min(remaining, int(rng.integers(4, 13)))
        out += xtb.md_snapshots(rng, batch, skipped, pick, SOURCE)
        remaining -= batch
    return out


def pick(rng: np.random.Generator) -> Atoms:
    """A randomly oriented molecule from one of the three pools (equal chances)."""
    pool = int(rng.integers(3))
    if pool == 0:
        atoms = molecule(str(rng.choice(ORGANIC_MOLECULES)))
    elif pool == 1:
        atoms = molecule(str(rng.choice(MAIN_GROUP_MOLECULES)))
        if CHLORINE in atoms.numbers and rng.random() < 0.5:
            atoms = brominated(atoms)
    else:
        atoms = substituted(rng)
    return xtb.oriented(atoms, rng)


def brominated(atoms: Atoms) -> Atoms:
    """``atoms`` with every Cl swapped for Br, each Cl–X bond lengthened by the difference of
    the covalent radii (0.18 Å): a terminal Br moves away from its neighbour, the neighbours
    of a central Br (BrF3) move away from it."""
    out = atoms.copy()
    grow = covalent_radii[BROMINE] - covalent_radii[CHLORINE]
    pos = atoms.positions
    shift = np.zeros_like(pos)
    for i in np.flatnonzero(atoms.numbers == CHLORINE):
        d = np.linalg.norm(pos - pos[i], axis=1)
        bonded = [
            j
            for j in range(len(atoms))
            if j != i
            and d[j] < 1.25 * (covalent_radii[CHLORINE] + covalent_radii[atoms.numbers[j]])
        ]
        if len(bonded) == 1:
            shift[i] += grow * (pos[i] - pos[bonded[0]]) / d[bonded[0]]
        else:
            for j in bonded:
                shift[j] += grow * (pos[j] - pos[i]) / d[j]
    out.positions = pos + shift
    out.numbers[atoms.numbers == CHLORINE] = BROMINE
    return out


def substituted(rng: np.random.Generator) -> Atoms:
    """A centre of :data:`CENTRES` with a random ligand of :data:`LIGANDS` on each bond, on
    tetrahedral directions, bonds the sum of covalent radii (e.g. PBr3, SiH2Cl2, S(CH3)OH)."""
    centre = str(rng.choice(list(CENTRES)))
    symbols, positions = [centre], [np.zeros(3)]
    for u in TETRAHEDRON[: CENTRES[centre]]:
        ligand = str(rng.choice(LIGANDS))
        heavy = "C" if ligand == "CH3" else "O" if ligand == "OH" else ligand
        a = _bond(centre, heavy) * u
        symbols.append(heavy)
        positions.append(a)
        # a methyl's hydrogens and a hydroxyl's hydrogen on the tetrahedral directions about
        # the ligand atom that point away from the centre
        away = _frame_towards(-u)[1 : 4 if ligand == "CH3" else 2 if ligand == "OH" else 1]
        for v in away:
            symbols.append("H")
            positions.append(a + _bond(heavy, "H") * v)
    return Atoms(symbols, positions=np.array(positions))


def _bond(a: str, b: str) -> float:
    """Bond length (Å) of elements ``a`` and ``b``: the sum of their covalent radii."""
    return float(covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]])


def _frame_towards(u: np.ndarray) -> np.ndarray:
    """The tetrahedral directions (4, 3) rotated so that the first is the unit vector ``u``."""
    t = TETRAHEDRON[0]
    axis = np.cross(t, u)
    s, c = np.linalg.norm(axis), float(t @ u)
    if s < 1e-9:
        return TETRAHEDRON.copy() if c > 0 else -TETRAHEDRON
    k = axis / s
    skew = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = np.eye(3) + s * skew + (1 - c) * skew @ skew
    return TETRAHEDRON @ rot.T
