"""Shared fixtures: small labelled structures made by real calculators in milliseconds."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from matscale.data.pack import PackConfig, pack
from matscale.data.readers import atoms_to_structure
from matscale.data.structure import Structure

warnings.filterwarnings("ignore", category=DeprecationWarning, module="ase")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `./scripts/test` runs two workers on two cores: a second intra-op thread per worker
    # only spins against the other worker (SevenNet on the S22 dimers: 11 s on one thread,
    # 220 s on two beside a busy worker)
    torch.set_num_threads(1)


def emt_structures(n: int, seed: int = 0, source: str = "emt") -> list[Structure]:
    """``n`` rattled Cu/Au/Pd cells of 4–16 atoms with EMT energy, forces and stress."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1 + k % 2, 1 + (k // 2) % 2, 1))
        atoms.set_chemical_symbols(rng.choice(["Cu", "Au", "Pd"], size=len(atoms)))
        atoms.rattle(0.05, rng=rng)
        atoms.calc = EMT()
        atoms.calc.calculate(atoms, ["energy", "forces", "stress"])
        atoms.info["family"] = "bulk" if k % 3 else "strained"
        out.append(atoms_to_structure(atoms, source=source, key=f"emt#{k}"))
    return out


def mace_frames(structures: list[Structure], *, stress: bool = False) -> list:
    """``structures`` as ``ase.Atoms`` whose labels lie only under MACE's keys (``REF_energy``
    in info, ``REF_forces`` in arrays, with ``stress`` ``REF_stress`` in info), no calculator."""
    frames = []
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc = None
        atoms.info["REF_energy"] = s.energy
        atoms.arrays["REF_forces"] = s.forces
        if stress:
            atoms.info["REF_stress"] = s.stress
        frames.append(atoms)
    return frames


def molecules(n: int, seed: int = 0, source: str = "mol") -> list[Structure]:
    """``n`` rattled small molecules with synthetic (EMT) labels, non-periodic."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = molecule(["CH4", "H2O", "C2H6", "NH3"][k % 4])
        atoms.rattle(0.03, rng=rng)
        atoms.calc = EMT()
        atoms.calc.calculate(atoms, ["energy", "forces"])
        out.append(atoms_to_structure(atoms, source=source, key=f"mol#{k}"))
    return out


@pytest.fixture
def structures() -> list[Structure]:
    """A mixed list: 24 periodic EMT cells and 12 molecules, two sources."""
    return emt_structures(24) + molecules(12)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A tiny packed store for training tests: 40 EMT cells and 24 molecules, two sources."""
    root = tmp_path_factory.mktemp("tiny")
    path = root / "in.extxyz"
    ase.io.write(path, [s.to_atoms() for s in emt_structures(40) + molecules(24)])
    pack([path], root / "store", PackConfig(workers=1, cutoff=4.0), progress=False)
    return root / "store"


def small_files() -> None:
    """A ``preexec_fn`` for a child process whose files may not grow past 20 kB: a full disk
    as the writer sees it (the write fails with EFBIG instead of the signal killing it)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
