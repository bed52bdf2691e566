"""Structures for the calc tests: alloys like the tiny model's 'emt' head data."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk


def alloy(seed: int = 0, repeat: int | tuple[int, int, int] = 2, shear: float = 0.04) -> Atoms:
    """A rattled, sheared fcc Cu/Au/Pd cell: triclinic, its cell matrix not symmetric (so a
    transposed cell changes the geometry)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7).repeat(repeat)
    atoms.set_chemical_symbols(rng.choice(["Cu", "Au", "Pd"], size=len(atoms)))
    strain = np.eye(3) + rng.uniform(-shear, shear, (3, 3))
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    atoms.rattle(0.1, rng=rng)
    return atoms
