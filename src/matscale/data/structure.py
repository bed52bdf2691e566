"""The one record every reader, generator and the store exchange: :class:`Structure`.

Conventions (the same in every file of matscale):

=========== ============== ======= =====================================================
field       shape          unit    meaning
=========== ============== ======= =====================================================
numbers     [n_atoms]      —       atomic numbers Z (1..118)
positions   [n_atoms, 3]   Å       Cartesian positions
cell        [3, 3]         Å       lattice vectors as rows; zeros for a molecule
pbc         [3]            —       periodic along each lattice vector
energy      scalar         eV      total potential energy (not per atom)
forces      [n_atoms, 3]   eV/Å    −∂E/∂positions
stress      [6]            eV/Å³   Voigt order xx, yy, zz, yz, xz, xy; ASE's sign:
                                   σ = (1/V) ∂E/∂ε, so pressure = −trace/3
source      str            —       name of the data source (level of theory), e.g. ``emt-metals``
family      str            —       kind of structure inside a source, e.g. ``bulk``, ``md-1200K``
key         str            —       provenance, e.g. ``file.xyz#17``
labelled_by str            —       the model that made the labels when a model did (a
                                   teacher), e.g. ``SevenNet-0 (sevenn 0.13.0)``; empty when
                                   the source's own calculator did
=========== ============== ======= =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from matscale.data.graph import extent_problem, face_separations, neighbour_list
from matscale.errors import DataError

#: Atoms closer than this are rejected as unphysical (Å).
MIN_DISTANCE = 0.1
#: Largest atomic number a model embeds.
MAX_Z = 118


#: Names a source (a head) may not take: every metric of a run is keyed ``<source>/<metric>``
#: beside the splits' ``test/<metric>`` and ``holdout/<metric>`` (and a family's
#: ``holdout:<family>/...``), so a source named ``test`` had its validation errors replaced by
#: the test split's in the final metrics and the model card.
SPLIT_NAMES = ("train", "val", "test", "holdout")


def source_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a source's name, or None."""
    if name in SPLIT_NAMES or name.startswith("holdout:"):
        return (
            f"source name {name!r} is a split's name ({', '.join(SPLIT_NAMES)}), and a run's "
            "metrics would mix the two: give the records another source (--source NAME, or "
            "info['source']); a file's source is its name without suffix, or its folder's"
        )
    if not name or "/" in name:
        return (
            f"source name {name!r} is empty or holds '/', which separates a source from a "
            "metric in a run's records: give the records another source (--source NAME)"
        )
    return None


@dataclass(kw_only=True)
class Structure:
    """An atomic structure with optional labels. See the module docstring for units."""

    numbers: np.ndarray  # [n_atoms] int
    positions: np.ndarray  # [n_atoms, 3] Å
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # [3, 3] Å
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))  # [3]
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # [n_atoms, 3] eV/Å
    stress: np.ndarray | None = None  # [6] eV/Å³, Voigt
    source: str = "default"
    family: str = ""
    key: str = ""
    labelled_by: str = ""

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.numbers)

    def to_atoms(self) -> Atoms:
        """Return an ``ase.Atoms`` carrying the labels as a single-point calculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        results: dict[str, object] = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = np.asarray(self.forces)
        if self.stress is not None:
            results["stress"] = np.asarray(self.stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["source"] = self.source
        if self.family:
            atoms.info["family"] = self.family
        if self.labelled_by:
            atoms.info["labelled_by"] = self.labelled_by
        return atoms


def cell_problem(cell: np.ndarray, pbc: np.ndarray) -> tuple[str, str] | None:
    """What makes a periodic cell unusable, as (message, reason), or None when nothing does
    (or nothing is periodic). ``cell`` [3, 3] Å (rows, finite), ``pbc`` [3]; only the periodic
    directions need a lattice vector (a slab may leave z at zero). The reason is the short
    code of pack's skip counts: ``zero-volume``, ``zero-vector`` or ``degenerate`` (periodic
    images closer than :data:`MIN_DISTANCE`, which would crash the neighbour search or make
    it search forever). Training data and inference share these checks."""
    periodic = np.asarray(pbc, dtype=bool)
    if not periodic.any():
        return None
    box = np.asarray(cell, dtype=np.float64)
    volume = abs(float(np.linalg.det(box)))
    if periodic.all() and volume < 1e-6:
        return f"periodic cell has zero volume ({volume:.3g} Å³)", "zero-volume"
    axes = "".join(a for a, p in zip("xyz", periodic, strict=True) if p)
    if np.any(np.linalg.norm(box[periodic], axis=1) < 1e-6):
        return f"periodic along {axes} but a lattice vector there has zero length", "zero-vector"
    widths = face_separations(box[periodic])
    thin = int(np.argmin(widths))
    if not widths[thin] >= MIN_DISTANCE:  # NaN too: a degenerate lattice
        return (
            f"periodic cell is degenerate: along its {axes[thin]} lattice vector the periodic "
            f"images are {widths[thin]:.3g} Å apart (< {MIN_DISTANCE} Å; the periodic vectors "
            "are (nearly) parallel), so every atom would sit on its own image",
            "degenerate",
        )
    return None


def stress_to_voigt(stress: np.ndarray) -> np.ndarray:
    """Convert a stress given as 3x3 or Voigt-6 (xx, yy, zz, yz, xz, xy) into Voigt-6."""
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):
        return s
    if s.shape == (3, 3):
        s = 0.5 * (s + s.T)  # the symmetric part, as ASE takes it
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    if s.shape == (9,):
        return stress_to_voigt(s.reshape(3, 3))
    raise ValueError(f"stress has shape {s.shape}; expected (6,), (3, 3) or (9,)")


def voigt_to_matrix(voigt: np.ndarray) -> np.ndarray:
    """Convert Voigt-6 stress (xx, yy, zz, yz, xz, xy) into a symmetric 3x3 matrix."""
    xx, yy, zz, yz, xz, xy = np.asarray(voigt, dtype=np.float64)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def check_structure(
    s: Structure,
    *,
    file: str | None = None,
    record: int | str | None = None,
    require: tuple[str, ...] = (),
    max_force: float | None = None,
) -> None:
    """Raise :class:`DataError` naming file, record and field if ``s`` is unusable.

    Checks shapes, finiteness, atomic numbers, that the labels named in ``require``
    (``"energy"``, ``"forces"``, ``"stress"``) are present, that no two atoms (periodic
    images included) are closer than :data:`MIN_DISTANCE`, and that a periodic cell has
    non-zero volume. With ``max_force`` (eV/Å), a structure with any force component larger
    in magnitude is rejected too (the paper dropped those above 100 eV/Å).
    """

    def fail(msg: str, fld: str, kind: str) -> DataError:
        return DataError(msg, file=file, record=record, field=fld, kind=kind)

    n = len(s.numbers)
    if n == 0:
        raise fail("structure has no atoms", "numbers", "empty")
    numbers = np.asarray(s.numbers)
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise fail(
            f"expected integer atomic numbers of shape [n], got {numbers.dtype}", "numbers", "dtype"
        )
    if numbers.min() < 1 or numbers.max() > MAX_Z:
        raise fail(
            f"atomic numbers must lie in 1..{MAX_Z}, got {numbers.min()}..{numbers.max()}",
            "numbers",
            "unknown-element",
        )
    _check_array(s.positions, (n, 3), "positions", fail)
    _check_array(s.cell, (3, 3), "cell", fail)
    if np.asarray(s.pbc).shape != (3,):
        raise fail(f"expected shape (3,), got {np.asarray(s.pbc).shape}", "pbc", "shape")
    if s.energy is not None and not np.isfinite(s.energy):
        raise fail(f"energy is {s.energy}", "energy", "nan")
    if s.forces is not None:
        _check_array(s.forces, (n, 3), "forces", fail)
    if s.stress is not None:
        _check_array(s.stress, (6,), "stress", fail)
    if max_force is not None and s.forces is not None and np.abs(s.forces).max() > max_force:
        raise fail(
            f"a force exceeds {max_force} eV/Å ({np.abs(s.forces).max():.1f})",
            "forces",
            "too-large",
        )
    for label in require:
        if getattr(s, label) is None:
            raise fail(f"{label} required but missing", label, "missing")
    problem = cell_problem(s.cell, s.pbc)
    if problem:  # before the neighbour search, which would crash or never end
        raise fail(problem[0], "cell", problem[1])
    far = extent_problem(s.positions)
    if far:  # before the neighbour search of min_distance, which it would crash
        raise fail(far, "positions", "too-far")
    closest = min_distance(s)
    if closest < MIN_DISTANCE:
        raise fail(
            f"two atoms are {closest:.3g} Å apart (< {MIN_DISTANCE} Å)", "positions", "too-close"
        )


def min_distance(s: Structure) -> float:
    """Smallest distance between two atoms, periodic images included (Å); inf for one atom."""
    pbc = np.asarray(s.pbc, dtype=bool)
    cell = np.asarray(s.cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    # A cutoff this small makes vesin build a grid of tiny cells (slow); 1 Å costs ~nothing and
    # any pair closer than MIN_DISTANCE is in it.
    nl = neighbour_list(1.0, len(s.numbers), full=False)
    (d,) = nl.compute(
        points=np.asarray(s.positions, np.float64), box=cell, periodic=pbc, quantities="d"
    )
    return float(d.min()) if len(d) else float("inf")


def _check_array(
    value: object,
    shape: tuple[int, ...],
    name: str,
    fail: Callable[[str, str, str], DataError],
) -> None:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise fail(f"expected shape {shape}, got {arr.shape}", name, "shape")
    if not np.issubdtype(arr.dtype, np.number):
        raise fail(f"expected numbers, got dtype {arr.dtype}", name, "dtype")
    if not np.all(np.isfinite(arr)):
        raise fail("contains NaN or inf", name, "nan")
