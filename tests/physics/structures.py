"""Small test structures as AtomGraphs in float64."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk, molecule

from matscale.data.batch import AtomGraph, collate, graph_sample
from matscale.data.graph import model_positions
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure


def periodic(seed: int = 0) -> Structure:
    """A rattled, strained 8-atom Cu/Au cell (triclinic after strain)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7).repeat((2, 2, 2))
    atoms.set_chemical_symbols(rng.choice(["Cu", "Au"], size=len(atoms)))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + rng.uniform(-0.05, 0.05, (3, 3))), scale_atoms=True)
    atoms.rattle(0.1, rng=rng)
    return atoms_to_structure(atoms, source="a")


def compressed(seed: int = 0) -> Structure:
    """:func:`periodic` with two atoms pushed to 1.3 Å and one to 1.7 Å of a neighbour: far
    inside the repulsive prior's range (0.75 x 2.64 Å for Cu-Cu)."""
    s = periodic(seed)
    positions = s.positions.copy()
    for atom, gap in ((1, 1.3), (2, 1.7)):
        d = positions[atom] - positions[0]
        positions[atom] = positions[0] + d / np.linalg.norm(d) * gap
    return Structure(**{**s.__dict__, "positions": positions})


def molecular(name: str = "CH3CH2OH", seed: int = 0) -> Structure:
    atoms = molecule(name)
    atoms.rattle(0.05, rng=np.random.default_rng(seed))
    return atoms_to_structure(atoms, source="b")


def graph(*structures: Structure, cutoff: float = 4.0) -> AtomGraph:
    """float64 AtomGraph; head index 0 for source 'a', 1 for 'b'."""
    samples = [graph_sample(s, cutoff, source={"a": 0, "b": 1}[s.source]) for s in structures]
    g = collate(samples)
    fields = {k: (v.double() if v.dtype == torch.float32 else v) for k, v in g.__dict__.items()}
    # geometry straight from the float64 structures (graph_sample stores float32), wrapped and
    # centred as graph_sample does it (its edges' cell shifts belong to those positions)
    fields["positions"] = torch.from_numpy(
        np.concatenate([model_positions(s.positions, s.cell, s.pbc) for s in structures])
    )
    fields["cell"] = torch.from_numpy(np.stack([s.cell for s in structures]).astype(np.float64))
    return AtomGraph(**fields)


def random_rotation(seed: int = 0) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q
