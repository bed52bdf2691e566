"""NVE stability of oxides and alloys: energy drift and whether the crystal holds together.

Each system (:data:`SYSTEMS`: two oxides, a perovskite and two alloys, 16–40 atoms) starts from
its experimental lattice with Maxwell–Boltzmann velocities at :data:`TEMPERATURE_K` and runs
velocity-Verlet NVE (``matscale.calc.dynamics``). Reported: the total-energy drift (meV/atom/ps,
least squares), the largest excursion of the total energy from its start (meV/atom), the mean
temperature, and the smallest interatomic distance over the run (Å; a collapse shows as a
contact far below the crystal's), with the atoms/s of the run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ase import Atoms

from matscale.bench.subjects import Subject

TEMPERATURE_K = 600.0
TIMESTEP_FS = 1.0


def systems() -> dict[str, Atoms]:
    """The crystals the suite runs (experimental lattice constants, Å)."""
    from ase.build import bulk
    from ase.spacegroup import crystal

    perovskite = crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
        spacegroup=221,
        cellpar=[3.905, 3.905, 3.905, 90, 90, 90],
    )
    cuau = bulk("Cu", "fcc", a=3.75, cubic=True)
    cuau.symbols[[1, 2]] = "Au"  # L1_0-like ordering of the cubic cell's four sites
    return {
        "MgO (rocksalt)": bulk("MgO", "rocksalt", a=4.212, cubic=True).repeat(2),
        "ZnO (wurtzite)": bulk("ZnO", "wurtzite", a=3.250, c=5.207, u=0.382).repeat((2, 2, 2)),
        "SrTiO3 (perovskite)": perovskite.repeat(2),
        "NiAl (B2)": bulk("NiAl", "cesiumchloride", a=2.887).repeat(2),
        "CuAu (L1_0)": cuau.repeat(2),
    }


def run(subject: Subject, *, steps: int = 10_000, log_every: int = 10) -> dict[str, Any]:
    """NVE of every system ``subject`` covers for ``steps`` × 1 fs (10 ps by default)."""
    from matscale.calc.dynamics import MDConfig, energy_drift, run_md

    rows: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    atoms_done, seconds = 0, 0.0
    cfg = MDConfig(
        ensemble="nve",
        timestep_fs=TIMESTEP_FS,
        steps=steps,
        temperature_K=TEMPERATURE_K,
        log_every=log_every,
    )
    for name, atoms in systems().items():
        if not subject.covers(atoms.get_chemical_symbols()):
            skipped.append(name)
            continue
        atoms = atoms.copy()
        atoms.calc = subject.calc
        shortest = [np.inf]

        def contact(a: Atoms = atoms, seen: list[float] = shortest) -> None:
            d = a.get_all_distances(mic=True)
            seen[0] = min(seen[0], float(d[np.triu_indices(len(a), 1)].min()))

        started = time.perf_counter()
        try:
            log = run_md(atoms, cfg, progress=False, observers=[(contact, log_every)])
        except Exception as exc:  # the calculator's own failure mid-run: recorded
            rows[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        seconds += time.perf_counter() - started
        atoms_done += len(atoms) * (steps + 1)
        e = np.array([r["etot_eV"] for r in log]) / len(atoms)  # eV/atom
        rows[name] = {
            "atoms": len(atoms),
            "ps": steps * TIMESTEP_FS / 1000,
            "drift_meV_per_atom_per_ps": round(energy_drift(log, len(atoms)), 4),
            "max_excursion_meV_per_atom": round(1000 * float(np.abs(e - e[0]).max()), 3),
            "mean_temperature_K": round(float(np.mean([r["temperature_K"] for r in log])), 1),
            "shortest_contact_A": round(shortest[0], 3),
        }
    return {
        "systems": rows,
        "not_covered": skipped,
        "atoms_per_s": round(atoms_done / seconds, 1) if seconds else float("nan"),
    }
