"""``teacher-sevennet`` and ``teacher-chgnet``: crystals across the periodic table, labelled by a
universal potential trained on MPtrj (PBE/PBE+U) that ships its weights in its wheel.

No DFT dataset can be downloaded here; a teacher can label as many structures as a scaling
study needs, with PBE-like physics across ~89 elements. Every record names its teacher and
version (``Structure.labelled_by``), and so does the store (``data info``).

Structures (8–32 atoms, periodic; the ``eos`` family's primitive cells 1–14), over
:data:`ELEMENTS` (84 elements: those SevenNet-0 was trained on, less the noble gases):

- prototypes: elemental fcc, bcc, hcp, diamond and simple cubic; binary rocksalt,
  zincblende, wurtzite and fluorite (a cation with an anion of :data:`ANIONS`) and CsCl (two
  metals); ternary cubic perovskite ABX3 and spinel AB2X4;
- lattice: a first guess from covalent radii (nearest neighbours at r_A + r_B), then the
  volume the teacher finds lowest in a scan of the primitive cell (:func:`relaxed`);
  prototypes without a minimum in the scan, or denser than :data:`MAX_DENSITY`, are refused;
- families: ``bulk`` (±3 % normal and ±2 % shear strain, rattled 0.02–0.10 Å), ``strained``
  (±10 % normal, ±5 % shear, rattled up to 0.15 Å), ``vacancy`` (one atom removed),
  ``surface`` (the cell opened by 10 Å of vacuum along one axis; no stress label),
  ``md-<T>K`` (snapshots of teacher-driven Langevin MD at 300–2000 K) and ``eos`` (the relaxed
  primitive cell itself at the volumes :data:`EOS_VOLUMES`, unrattled: an equation of state,
  whose energies and stresses fix equilibrium volumes and bulk moduli, the numbers users ask
  of a universal potential first).

Labels: energy (eV), forces (eV/Å) and, except for surfaces, stress (eV/Å³). A structure whose
labels are not finite, or whose largest force exceeds :data:`MAX_FORCE`, is skipped.
Teachers live in the optional extra ``teachers`` (``pip install -e '.[teachers]'``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

from matscale.data.generate.geometry import langevin, strain_cell
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure

#: Bumped whenever the same seed would give other structures (see ``emt.VERSION``).
#: 2: prototypes too dense or without an energy minimum are refused; 3: plateaus and cells
#: beyond 1.6x the guess are no minimum; 4: every prototype adds its ``eos`` family.
VERSION = 4
#: Seconds per structure on one core, for scheduling; it also sets the chunk size (30 s of
#: work: 37 structures), which a folder's manifest records, so it stays at version 1's
#: measured 0.8 s although version 3's scans take ~1.4 s.
SECONDS_PER_STRUCTURE = 0.8
#: Largest force component a label may have (eV/Å): beyond it the structure is skipped.
MAX_FORCE = 50.0

#: Atomic numbers SevenNet-0 (MPtrj) knows: 1–83 and 89–94 (Ac–Pu).
TEACHER_Z = (*range(1, 84), *range(89, 95))
_NOBLE = {"He", "Ne", "Ar", "Kr", "Xe"}
#: Elements the structures are made of (84): the teachers' elements but the noble gases.
ELEMENTS: tuple[str, ...] = tuple(
    chemical_symbols[z] for z in TEACHER_Z if chemical_symbols[z] not in _NOBLE
)
#: Anions of the ionic binaries and ternaries.
ANIONS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "As", "Se", "Br", "Te", "I")
NONMETALS = set(ANIONS) | {"Ge", "Sb", "At", "Po", "Rn"}
METALS = tuple(e for e in ELEMENTS if e not in NONMETALS)
#: Large cations (perovskite A site) and octahedral cations (B site) of the ternaries.
A_SITE = ("Li", "Na", "K", "Rb", "Cs", "Ca", "Sr", "Ba", "La", "Ce", "Nd", "Y", "Pb", "Bi")
B_SITE = ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zr", "Nb", "Mo", "Sn", "Hf", "Ta")
SPINEL_A = ("Mg", "Zn", "Fe", "Co", "Ni", "Mn", "Cu", "Cd")
SPINEL_B = ("Al", "Fe", "Cr", "Co", "Mn", "Ga", "V", "Ti", "In", "Rh")
TEMPERATURES_K = (300, 800, 1200, 2000)
FAMILY_WEIGHTS = {"bulk": 0.35, "strained": 0.15, "vacancy": 0.1, "surface": 0.1, "md": 0.3}
#: Share of each kind of prototype: every element appears in the elemental share.
KIND_WEIGHTS = {"elemental": 0.4, "binary": 0.4, "ternary": 0.2}
#: Structures made from one relaxed prototype (its volume scan is the costly part), besides
#: its equation of state.
STRUCTURES_PER_CELL = 4
#: Volumes of a prototype's ``eos`` family, as fractions of its relaxed volume: ±8 %, a little
#: wider than the ±6 % over which equations of state are usually fitted (the relaxed volume is
#: only as good as the scan's 1.5 % steps in the lattice constant, ~4.5 % in volume).
EOS_VOLUMES = (0.92, 0.96, 1.0, 1.04, 1.08)
#: MD steps between snapshots, and snapshots per run.
MD_STRIDE, MD_SNAPSHOTS = 8, 3


@dataclass(frozen=True)
class Teacher:
    """A universal potential that labels structures: its source name, display name and how
    to make its ASE calculator (one per process, reused) and read its package version."""

    source: str
    name: str
    package: str
    make: Callable[[], Any]

    def labelled_by(self) -> str:
        """What every record says made its labels, e.g. ``SevenNet-0 (sevenn 0.13.0)``."""
        from importlib.metadata import version

        return f"{self.name} ({self.package} {version(self.package)})"


def _sevennet() -> Any:
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator("7net-0", device="cpu")


def _chgnet() -> Any:
    from chgnet.model.dynamics import CHGNetCalculator

    return CHGNetCalculator(use_device="cpu", on_isolated_atoms="ignore")


SEVENNET = Teacher(source="teacher-sevennet", name="SevenNet-0", package="sevenn", make=_sevennet)
CHGNET = Teacher(source="teacher-chgnet", name="CHGNet 0.3.0", package="chgnet", make=_chgnet)
TEACHERS = (SEVENNET, CHGNET)

_CALCULATORS: dict[str, Any] = {}


def missing_package(source: str) -> str | None:
    """The package ``source`` needs and this environment lacks (None if nothing is missing,
    or if ``source`` is not a teacher's)."""
    from importlib.util import find_spec

    for t in TEACHERS:
        if t.source == source and find_spec(t.package) is None:
            return t.package
    return None


def calculator(teacher: Teacher) -> Any:
    """``teacher``'s ASE calculator, loaded once per process (loading takes seconds)."""
    if teacher.source not in _CALCULATORS:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the packages' notes on their own versions
                _CALCULATORS[teacher.source] = teacher.make()
        except ImportError as exc:
            raise RuntimeError(
                f"the {teacher.source} source needs {teacher.package}: "
                "pip install -c constraints.txt -e '.[teachers]'"
            ) from exc
    return _CALCULATORS[teacher.source]


def generator(teacher: Teacher) -> Callable[[int, np.random.Generator, Counter[str]], list]:
    """The ``matscale data generate`` function of ``teacher``'s source."""

    def generate(n: int, rng: np.random.Generator, skipped: Counter[str]) -> list[Structure]:
        return make(teacher, n, rng, skipped)

    return generate


def make(
    teacher: Teacher, n: int, rng: np.random.Generator, skipped: Counter[str]
) -> list[Structure]:
    """Up to ``n`` structures labelled by ``teacher``; those skipped are counted by reason."""
    calc = calculator(teacher)
    who = teacher.labelled_by()
    families = list(FAMILY_WEIGHTS)
    out: list[Structure] = []

    def room() -> int:  # prototypes refused are not structures: they do not count
        return n - len(out) - sum(v for k, v in skipped.items() if k not in PROTOTYPE_SKIPS)

    refused_in_a_row = 0
    while room() > 0:
        cell = relaxed(prototype(rng), calc)  # 10 teacher calls, shared by the cell's structures
        refused = _refused(cell)
        if refused:
            skipped[refused] += 1
            refused_in_a_row += 1
            if refused_in_a_row >= MAX_REFUSED_IN_A_ROW:  # a broken teacher, not bad luck
                raise RuntimeError(
                    f"{teacher.source}: {refused_in_a_row} prototypes in a row refused "
                    f"({dict(skipped)}): is {teacher.name} ({teacher.package}) working?"
                )
            continue
        refused_in_a_row = 0
        for atoms in eos(cell)[: room()]:
            reason = label(atoms, calc, stress=True)
            if reason:
                skipped[reason] += 1
                continue
            out.append(_record(atoms, teacher, who))
        for _ in range(STRUCTURES_PER_CELL):
            if room() <= 0:
                break
            family = families[int(rng.choice(len(families), p=list(FAMILY_WEIGHTS.values())))]
            for atoms in _family(family, cell, calc, rng, room()):
                reason = label(atoms, calc, stress=family != "surface")
                if reason:
                    skipped[reason] += 1
                    continue
                out.append(_record(atoms, teacher, who))
    return out


def _record(atoms: Atoms, teacher: Teacher, who: str) -> Structure:
    s = atoms_to_structure(atoms, source=teacher.source)
    s.labelled_by = who
    return s


def eos(cell: Atoms) -> list[Atoms]:
    """The relaxed primitive ``cell`` scaled isotropically to each of :data:`EOS_VOLUMES`
    (family ``eos``; positions scale with the cell, nothing is rattled)."""
    out = []
    for v in EOS_VOLUMES:
        atoms = _scaled(cell, v ** (1 / 3))
        atoms.info = {"family": "eos"}  # not the scan's bookkeeping (``no_minimum``)
        out.append(atoms)
    return out


def prototype(rng: np.random.Generator) -> Atoms:
    """A primitive cell of a random prototype, nearest neighbours at the radius guess."""
    kinds = list(KIND_WEIGHTS)
    kind = kinds[int(rng.choice(len(kinds), p=list(KIND_WEIGHTS.values())))]

    def pick(names: tuple[str, ...]) -> str:
        return names[int(rng.integers(len(names)))]

    if kind == "elemental":
        x = pick(ELEMENTS)
        lattice = pick(("fcc", "bcc", "hcp", "diamond", "sc"))
        return elemental(x, lattice, 2 * _radius(x))
    if kind == "binary":
        lattice = pick(("rocksalt", "zincblende", "wurtzite", "fluorite", "cesiumchloride"))
        if lattice == "cesiumchloride":
            a, b = pick(METALS), pick(METALS)
        else:
            a, b = pick(METALS), pick(ANIONS)
        return binary(a, b, lattice, _radius(a) + _radius(b))
    if rng.random() < 0.5:
        return perovskite(pick(A_SITE), pick(B_SITE), pick(("O", "F", "S", "Cl", "Br", "I")))
    return spinel(pick(SPINEL_A), pick(SPINEL_B), pick(("O", "S", "Se")))


def _radius(symbol: str) -> float:
    return float(covalent_radii[atomic_numbers[symbol]])


def elemental(x: str, lattice: str, d: float) -> Atoms:
    """Element ``x`` in ``lattice`` with nearest neighbours at ``d`` Å."""
    if lattice == "hcp":
        return bulk(x, "hcp", a=d, c=d * math.sqrt(8 / 3))
    a = {"fcc": d * math.sqrt(2), "bcc": 2 * d / math.sqrt(3), "diamond": 4 * d / math.sqrt(3)}
    return bulk(x, lattice, a=a.get(lattice, d))


def binary(a: str, b: str, lattice: str, d: float) -> Atoms:
    """The binary ``a b`` (``a b2`` for fluorite) in ``lattice``, nearest neighbours at ``d``."""
    if lattice == "wurtzite":
        lat = d * math.sqrt(8 / 3)
        return bulk(a + b, "wurtzite", a=lat, c=lat * math.sqrt(8 / 3), u=0.375)
    if lattice == "fluorite":
        return bulk(a + b + "2", "fluorite", a=4 * d / math.sqrt(3))
    spacing = {"rocksalt": 2.0, "zincblende": 4 / math.sqrt(3), "cesiumchloride": 2 / math.sqrt(3)}
    return bulk(a + b, lattice, a=d * spacing[lattice])


def perovskite(a: str, b: str, x: str) -> Atoms:
    """Cubic perovskite ``a b x3`` (5 atoms), B–X at the radius sum."""
    lat = 2 * (_radius(b) + _radius(x))
    frac = [(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)]
    return Atoms(a + b + x * 3, scaled_positions=frac, cell=np.eye(3) * lat, pbc=True)


def spinel(a: str, b: str, x: str) -> Atoms:
    """Normal spinel ``a b2 x4`` (the 14-atom primitive cell), B–X at the radius sum."""
    from ase.spacegroup import crystal

    lat = 4.2 * (_radius(b) + _radius(x))  # a ≈ 4.2 d(B–X) in spinels (MgAl2O4: 8.08 Å)
    return crystal(
        [a, b, x],
        basis=[(0.125, 0.125, 0.125), (0.5, 0.5, 0.5), (0.26, 0.26, 0.26)],
        spacegroup=227,
        setting=2,  # origin choice 2: A at 8a (1/8, 1/8, 1/8), B at 16d, X at 32e
        cellpar=[lat, lat, lat, 90, 90, 90],
        primitive_cell=True,
    )


def relaxed(cell: Atoms, calc: Any) -> Atoms:
    """``cell`` scaled isotropically to the lowest energy the teacher finds: a coarse scan of
    the lattice by ±16 %, moved on while its lowest point is at an end (at most
    :data:`SCAN_MOVES` times: outwards by 16 % steps up to :data:`SCALE_CEILING`, inwards by
    8 % steps down to :data:`SCALE_FLOOR` of the radius guess), then a fine scan by ±3 %
    around the best (10–22 calls). A cell whose curve does not turn, or turns on a plateau
    (:data:`PLATEAU_EV`), is marked ``info["no_minimum"]``."""
    best, turned, direction = 1.0, False, 0
    scales = 1 + np.linspace(-0.16, 0.16, 5)
    for _ in range(SCAN_MOVES + 1):
        energies = np.array([_energy(_scaled(cell, s), calc) for s in scales])
        if not np.isfinite(energies).any():
            break
        k = int(np.nanargmin(energies))
        best = float(scales[k])
        if direction < 0 and best <= SCALE_FLOOR + 1e-9:
            break  # still falling at the floor: a collapse
        if direction > 0 and best >= SCALE_CEILING - 1e-9:
            break  # still falling at the ceiling: unbound
        # a moved window starts at the previous best, whose other side was higher: lowest
        # there, or inside any window, the curve turns, if it is lower than its neighbours
        # (a plateau, e.g. atoms beyond the teacher's cutoff, is no minimum)
        inside = 0 < k < len(scales) - 1 or (direction and k == 0)
        if inside and _strictly_lowest(energies, k, len(cell)):
            turned = True
            break
        if inside:
            break
        if not direction:
            direction = -1 if k == 0 else 1
        if direction < 0:
            # lowest at the compressed end: low-coordination prototypes (diamond, simple
            # cubic) bind tighter than the radius guess, but teachers also have holes at short
            # distances (energies that fall without end as atoms merge): scan down to
            # SCALE_FLOOR of the guess, no further
            scales = np.maximum(best * (1 - 0.08 * np.arange(5)), SCALE_FLOOR)
        else:  # lowest at the expanded end: scan on beyond it (the guess was too tight)
            scales = np.minimum(best * (1 + 0.16 * np.arange(5)), SCALE_CEILING)
    if turned:
        fine = best * (1 + np.linspace(-0.03, 0.03, 5))
        energies = np.array([_energy(_scaled(cell, s), calc) for s in fine])
        if np.isfinite(energies).any():
            best = float(fine[int(np.nanargmin(energies))])
    out = _scaled(cell, best)
    out.info["no_minimum"] = not turned
    return out


#: How often the coarse scan moves on when its lowest point is at an end, and the smallest and
#: largest scales of the radius guess it goes to (covalent radii underestimate the spacing of
#: alkali metals by at most ~10 %; 1.6x is an unbound cell).
SCAN_MOVES = 3
SCALE_FLOOR = 0.6
SCALE_CEILING = 1.6
#: How much lower than both neighbours (eV/atom) a scan's lowest point must be to be a minimum.
PLATEAU_EV = 1e-4
#: Prototypes refused one after another before generation stops as broken.
MAX_REFUSED_IN_A_ROW = 100


def _strictly_lowest(energies: np.ndarray, k: int, atoms: int) -> bool:
    """Whether ``energies[k]`` (eV) is below its scanned neighbours by :data:`PLATEAU_EV` per
    atom (a neighbour outside the window was higher by construction)."""
    around = [energies[j] for j in (k - 1, k + 1) if 0 <= j < len(energies)]
    return all(np.isfinite(e) and e - energies[k] > PLATEAU_EV * atoms for e in around)


#: Densest cell a prototype may have (atoms/Å³): diamond has 0.18, no solid at ambient
#: pressure beats 0.25. Elements that form molecular solids (H, N, O, halogens) put into a
#: close-packed lattice at their covalent bond length land far above it, where a teacher's
#: numbers mean nothing and a 5 Å neighbour list holds hundreds of atoms (one such cell
#: stalled generation for minutes per structure).
MAX_DENSITY = 0.25
#: Why a prototype is refused before any of its structures is made (not counted as skipped
#: structures: another prototype is drawn).
TOO_DENSE = "prototype denser than 0.25 atoms/Å³"
NO_MINIMUM = "prototype without an energy minimum in its scan"
PROTOTYPE_SKIPS = (TOO_DENSE, NO_MINIMUM)


def _refused(cell: Atoms) -> str:
    """Why the relaxed prototype ``cell`` is not used, or ""."""
    if len(cell) / cell.get_volume() > MAX_DENSITY:
        return TOO_DENSE
    if cell.info.get("no_minimum"):
        return NO_MINIMUM
    return ""


def _scaled(cell: Atoms, s: float) -> Atoms:
    out = cell.copy()
    out.set_cell(cell.cell[:] * s, scale_atoms=True)
    return out


def _energy(atoms: Atoms, calc: Any) -> float:
    atoms.calc = calc
    try:
        e = float(atoms.get_potential_energy())
    except Exception:  # a teacher may fail on a strange cell: that scale is not a minimum
        return math.nan
    return e if math.isfinite(e) else math.nan


def supercell(cell: Atoms, rng: np.random.Generator, lo: int = 8, hi: int = 32) -> Atoms:
    """``cell`` repeated along its shortest axes until it holds at least a random target of
    ``lo``–``hi`` atoms (never more than ``hi`` unless one cell does)."""
    target = int(rng.integers(lo, hi + 1))
    reps = np.ones(3, dtype=int)
    lengths = cell.cell.lengths()
    while len(cell) * reps.prod() < target:
        k = int(np.argmin(lengths * reps))
        if len(cell) * reps.prod() * (reps[k] + 1) / reps[k] > hi:
            break
        reps[k] += 1
    return cell.repeat(tuple(int(r) for r in reps))


def _family(
    family: str, cell: Atoms, calc: Any, rng: np.random.Generator, room: int
) -> list[Atoms]:
    """Structures of ``family`` made from the relaxed primitive ``cell`` (at most ``room``)."""
    atoms = supercell(cell, rng)
    if family == "md":
        return _md(atoms, calc, rng, room)
    normal, shear, rattle = (0.10, 0.05, 0.15) if family == "strained" else (0.03, 0.02, 0.10)
    strain_cell(atoms, rng, normal=normal, shear=shear)
    if family == "vacancy" and len(atoms) > 2:
        del atoms[int(rng.integers(len(atoms)))]
    if family == "surface":
        axis = int(rng.integers(3))
        atoms.center(vacuum=5.0, axis=axis)  # 10 Å between periodic images of the slab
    atoms.rattle(stdev=float(rng.uniform(0.02, rattle)), rng=rng)
    atoms.info["family"] = family
    return [atoms]


def _md(atoms: Atoms, calc: Any, rng: np.random.Generator, room: int) -> list[Atoms]:
    """Up to :data:`MD_SNAPSHOTS` snapshots, :data:`MD_STRIDE` steps apart, of Langevin MD at
    a random temperature of :data:`TEMPERATURES_K`."""
    temperature = int(TEMPERATURES_K[int(rng.integers(len(TEMPERATURES_K)))])
    atoms.rattle(stdev=0.03, rng=rng)
    atoms.calc = calc
    step_fs = 1.0 if "H" in atoms.get_chemical_symbols() else 2.0
    dyn = langevin(atoms, temperature, step_fs, rng)
    out = []
    for _ in range(min(MD_SNAPSHOTS, room)):
        try:
            dyn.run(MD_STRIDE)
        except Exception:  # the teacher failed on a configuration the run reached
            break
        snap = atoms.copy()
        snap.info["family"] = f"md-{temperature}K"
        out.append(snap)
    return out


def label(atoms: Atoms, calc: Any, *, stress: bool) -> str:
    """Label ``atoms`` in place with ``calc``'s results; return why it is unusable, or ""."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = calc
    try:
        energy = float(atoms.get_potential_energy())
        arrays = {"forces": np.array(atoms.get_forces())}
        if stress:
            arrays["stress"] = np.array(atoms.get_stress())
    except Exception:  # the teacher's own failure on this structure
        return "teacher failed"
    if not (math.isfinite(energy) and all(np.isfinite(v).all() for v in arrays.values())):
        return "not finite"
    if np.abs(arrays["forces"]).max() > MAX_FORCE:
        return f"force above {MAX_FORCE:g} eV/Å"
    atoms.calc = SinglePointCalculator(atoms, energy=energy, **arrays)
    return ""
