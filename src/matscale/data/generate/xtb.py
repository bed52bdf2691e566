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
from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from ase.data import atomic_numbers, covalent_radii

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
        label(out, atoms, "rattled", skipped, SOURCE)
    for _ in range(counts["dimer"]):
        label(out, dimer(rng, _molecule), "dimer", skipped, SOURCE)
    for _ in range(counts["large"]):
        atoms = _chain(rng)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.06)), rng=rng)
        label(out, atoms, "large", skipped, SOURCE)
    remaining = counts["md"]
    while remaining > 0:
        batch = min(remaining, int(rng.integers(4, 13)))
        out += md_snapshots(rng, batch, skipped, _molecule, SOURCE)
        remaining -= batch
    return out


def calculator() -> object:
    """A GFN2-xTB calculator (tblite), silent, with a generous SCF iteration limit."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0, max_iterations=250)


def _molecule(rng: np.random.Generator) -> Atoms:
    return oriented(molecule(str(rng.choice(MOLECULES))), rng)


def oriented(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """``atoms`` rotated by a random angle about a random axis through its centre."""
    atoms.rotate(float(rng.uniform(0, 360)), rng.normal(size=3), center="COP")
    return atoms


def dimer(rng: np.random.Generator, pick: Callable[[np.random.Generator], Atoms]) -> Atoms:
    """Two rattled molecules drawn by ``pick``, the closest contact 2.5–5 Å."""
    a, b = pick(rng), pick(rng)
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
    n = int(rng.integers(CHAIN_CARBONS[0], CHAIN_CARBONS[1] + 1))
    return chain(rng, n, {"F": SUBSTITUTION, "OH": SUBSTITUTION})


#: Bond from carbon (Å) and, for two-atom groups, the hydrogen's bond (Å) of each substituent
#: of :func:`chain`.
GROUPS = {
    "H": ("H", BOND["CH"], None),
    "F": ("F", BOND["CF"], None),
    "Cl": ("Cl", 1.77, None),
    "Br": ("Br", 1.94, None),
    "OH": ("O", BOND["CO"], BOND["OH"]),
    "SH": ("S", 1.82, 1.34),
}
#: Torsion changes (degrees) a conformer draws for each backbone bond: trans kept, or gauche.
TORSIONS = (0.0, 120.0, -120.0)
#: Closest approach (Å) of two atoms not bonded to each other in a conformer (hydrogens).
CLASH = 1.7


def chain(
    rng: np.random.Generator, n: int, substituents: dict[str, float], conformer: bool = False
) -> Atoms:
    """A zigzag chain of ``n`` carbons in ideal tetrahedral geometry, each hydrogen replaced
    with the probabilities of ``substituents`` (group names of :data:`GROUPS`), randomly
    oriented. ``conformer`` turns each backbone bond by a random torsion of
    :data:`TORSIONS` and keeps atoms apart (see :func:`_apart`): a group placed too close to
    any atom but its own carbon stays a hydrogen (a hydroxyl or thiol hydrogen first tries the
    other side), and a torsion that would bring atoms of carbons two or more apart too close
    is not made (vicinal pairs are left to the staggered torsions: gauche at closest).
    Without it the chain is the one ``xtb-molecules`` has always made (the same seed gives
    the same molecule)."""
    half = TETRAHEDRAL / 2
    # backbone in the xy plane, with one virtual carbon beyond each end (where the terminal
    # carbons' in-plane hydrogen points)
    k = np.arange(-1, n + 1)
    backbone = np.stack(
        [k * BOND["CC"] * np.sin(half), (k % 2) * BOND["CC"] * np.cos(half), 0 * k], axis=1
    )
    symbols, positions = ["C"] * n, list(backbone[1:-1])
    owner = list(range(n))  # the backbone carbon each atom belongs to
    bounds = np.cumsum(list(substituents.values()))
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
            hit = int(np.searchsorted(bounds, rng.random(), side="right"))
            group = list(substituents)[hit] if hit < len(substituents) else "H"
            new = _group(group, c, u, z)
            if conformer:
                options = (new, _group(group, c, u, -z))
                fitting = [g for g in options if _fits(g, i - 1, symbols, positions)]
                new = fitting[0] if fitting else _group("H", c, u, z)
            for symbol, position in new:
                symbols.append(symbol)
                positions.append(position)
                owner.append(i - 1)
    atoms = Atoms(symbols, positions=np.array(positions))
    if conformer:
        _turn_torsions(atoms, np.array(owner), n, rng)
    return oriented(atoms, rng)


def _group(group: str, c: np.ndarray, u: np.ndarray, z: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The atoms of ``group`` on carbon ``c`` along the unit bond ``u``; a hydroxyl's or
    thiol's hydrogen at the tetrahedral angle, turned off the C-X axis towards ``z × u``."""
    heavy, length, hydrogen = GROUPS[group]
    a = c + length * u
    if hydrogen is None:
        return [(heavy, a)]
    side = np.cross(u, z if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0]))
    side /= np.linalg.norm(side)
    return [
        (heavy, a),
        ("H", a + hydrogen * (-np.cos(TETRAHEDRAL) * u + np.sin(TETRAHEDRAL) * side)),
    ]


#: Atoms not bonded to each other stay at least this many times the sum of their covalent
#: radii apart, and at least :data:`CLASH` Å (hydrogens).
CONTACT = 1.3


def _apart(a: str, b: str, distance: float) -> bool:
    """Whether atoms of elements ``a`` and ``b`` at ``distance`` (Å) are not in contact."""
    radii = covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]]
    return distance >= max(CLASH, CONTACT * radii)


def _fits(
    new: list[tuple[str, np.ndarray]], carbon: int, symbols: list[str], positions: list
) -> bool:
    """Whether the atoms of a group bonded to atom ``carbon`` keep clear (:func:`_apart`) of
    every atom placed so far but that carbon."""
    placed = np.array(positions)
    for symbol, position in new:
        d = np.linalg.norm(placed - position, axis=1)
        for j in np.flatnonzero(d < 4.0):
            if j != carbon and not _apart(symbol, symbols[j], float(d[j])):
                return False
    return True


def _turn_torsions(atoms: Atoms, owner: np.ndarray, n: int, rng: np.random.Generator) -> None:
    """Turn the part of the chain beyond each backbone bond (carbons ``b+1``...) about it."""
    far = np.abs(owner[:, None] - owner[None]) >= 2
    radii = covalent_radii[atoms.numbers]
    closest = np.maximum(CLASH, CONTACT * (radii[:, None] + radii[None]))  # see _apart
    for b in range(1, n - 2):  # bonds C_b-C_{b+1} with atoms on both sides to turn
        angle = float(rng.choice(TORSIONS))
        if angle == 0.0:
            continue
        pos = atoms.positions
        axis = pos[b + 1] - pos[b]
        moving = owner > b
        turned = pos.copy()
        turned[moving] = _rotate(pos[moving] - pos[b], axis, angle) + pos[b]
        d = np.linalg.norm(turned[:, None] - turned[None], axis=-1)
        if (d[far] >= closest[far]).all():
            atoms.positions = turned


def _rotate(v: np.ndarray, axis: np.ndarray, degrees: float) -> np.ndarray:
    """Vectors ``v`` (N, 3) rotated by ``degrees`` about ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    return v * np.cos(t) + np.cross(k, v) * np.sin(t) + np.outer(v @ k, k) * (1 - np.cos(t))


def _closest(a: Atoms, b: Atoms) -> float:
    return float(np.min(np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1)))


def md_snapshots(
    rng: np.random.Generator,
    count: int,
    skipped: Counter[str],
    pick: Callable[[np.random.Generator], Atoms],
    source: str,
) -> list[Structure]:
    """``count`` snapshots of GFN2-xTB Langevin MD of a molecule drawn by ``pick``, at a
    temperature of :data:`TEMPERATURES_K`, every :data:`MD_STRIDE` steps of 0.5 fs."""
    temperature = int(rng.choice(TEMPERATURES_K))
    atoms = pick(rng)
    atoms.calc = calculator()
    dyn = langevin(atoms, temperature, timestep_fs=0.5, rng=rng)
    out: list[Structure] = []
    attempted = 0
    try:
        dyn.run(20)
        for _ in range(count):
            dyn.run(MD_STRIDE)
            attempted += 1  # label counts its own failures
            label(out, atoms.copy(), f"md-{temperature}K", skipped, source)
    except Exception:  # tblite raises a plain exception when the SCF fails mid-trajectory
        skipped["scf"] += count - attempted  # the snapshots the trajectory never reached
    return out


def label(
    out: list[Structure], atoms: Atoms, family: str, skipped: Counter[str], source: str
) -> None:
    """Append ``atoms`` labelled by GFN2-xTB (energy, forces) to ``out`` as a structure of
    ``source`` and ``family``; a failed SCF is counted in ``skipped`` instead."""
    atoms.calc = calculator()
    atoms.info["family"] = family
    try:
        atoms.calc.calculate(atoms, ["energy", "forces"])
    except Exception:  # tblite reports a failed SCF as a bare exception
        skipped["scf"] += 1
        return
    out.append(atoms_to_structure(atoms, source=source))
