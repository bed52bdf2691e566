"""Interaction energies of the S22 dimers (ASE's ``s22``) against their CCSD(T) values.

E_int = E(dimer) − E(monomer A) − E(monomer B), monomers at their geometry in the dimer (no
relaxation), as the S22 set defines it. Reported per dimer in meV, with the mean absolute
error and the mean signed error over the dimers the calculator covers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from matscale.bench.subjects import Subject


def run(subject: Subject) -> dict[str, Any]:
    """Score ``subject`` on the 22 dimers; those with elements it does not cover are listed."""
    from ase.collections import s22
    from ase.data.s22 import data as s22_data

    data: dict[str, Any] = s22_data

    rows: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    atoms_done, seconds = 0, 0.0
    for name in s22.names:
        dimer = s22[name]
        if not subject.covers(dimer.get_chemical_symbols()):
            skipped.append(name)
            continue
        n_a = data[name]["dimer atoms"][0]
        parts = [dimer, dimer[:n_a], dimer[n_a:]]
        energies = []
        try:
            for atoms in parts:
                started = time.perf_counter()
                energies.append(subject.energy(atoms))
                seconds += time.perf_counter() - started
                atoms_done += len(atoms)
        except Exception as exc:  # the calculator's own failure: recorded, the others go on
            rows[name] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        e_int = energies[0] - energies[1] - energies[2]
        reference = float(data[name]["interaction energy CC"])
        rows[name] = {
            "interaction_meV": round(1000 * e_int, 2),
            "ccsdt_meV": round(1000 * reference, 2),
            "error_meV": round(1000 * (e_int - reference), 2),
        }
    errors = np.array([r["error_meV"] for r in rows.values() if "error_meV" in r])
    return {
        "dimers": rows,
        "not_covered": skipped,
        "scored": len(errors),
        "failed": sorted(n for n, r in rows.items() if "failed" in r),
        "mae_meV": float(np.abs(errors).mean()) if len(errors) else float("nan"),
        "mean_signed_error_meV": float(errors.mean()) if len(errors) else float("nan"),
        "atoms_per_s": round(atoms_done / seconds, 1) if seconds else float("nan"),
    }
