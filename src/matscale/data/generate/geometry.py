"""Geometry helpers shared by the generators."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms


def strain_cell(atoms: Atoms, rng: np.random.Generator, normal: float, shear: float) -> None:
    """Deform ``atoms``' cell (atoms follow) by a random symmetric strain: diagonal components
    uniform in ±``normal``, off-diagonal in ±``shear`` (fractions, e.g. 0.05 = 5 %)."""
    strain = np.eye(3) + np.diag(rng.uniform(-normal, normal, 3))
    xy, xz, yz = rng.uniform(-shear, shear, 3)
    strain[0, 1] = strain[1, 0] = xy
    strain[0, 2] = strain[2, 0] = xz
    strain[1, 2] = strain[2, 1] = yz
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)


def langevin(
    atoms: Atoms, temperature_k: float, timestep_fs: float, rng: np.random.Generator
) -> Any:
    """A Langevin integrator for ``atoms`` (calculator attached) with Maxwell-Boltzmann
    velocities at ``temperature_k``, friction 0.05 /fs, seeded from ``rng``."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    thermalize_momenta(atoms, temperature_k, rng=rng)
    return Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=0.05,
        fixcm=False,
        rng=rng,
    )
