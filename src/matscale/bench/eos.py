"""Equations of state of the 71 elemental crystals of the Delta test (ASE's ``dcdft``
collection) against their all-electron WIEN2k references.

Protocol of the Delta test (Lejaeghere et al., Science 2016): energies at seven volumes from 94 %
to 106 % of the reference volume, cell shape and internal coordinates as in the collection
(scaled uniformly), a Birch–Murnaghan fit. Reported per element: equilibrium volume V0
(Å³/atom), bulk modulus B0 (GPa) and its pressure derivative B1, their errors against WIEN2k,
and Δ (meV/atom: the root-mean-square energy difference of the two fitted curves over ±6 %
of the mean volume, ``ase.utils.deltacodesdft.delta``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from ase.units import GPa

from matscale.bench.subjects import Subject
from matscale.errors import ConfigError

#: Volumes of the scan, as fractions of the reference volume (the Delta test's seven points).
SCALES = np.linspace(0.94, 1.06, 7)


def fit(volumes: np.ndarray, energies: np.ndarray) -> tuple[float, float, float, float]:
    """Birch–Murnaghan fit of energies (eV/atom) at volumes (Å³/atom): (E0, B0 eV/Å³, B1,
    V0). Starts from a parabola's minimum, as ASE's ``EquationOfState`` does."""
    from ase.eos import birchmurnaghan  # E(V; E0, B0, B1, V0)
    from scipy.optimize import curve_fit

    a, b, _ = np.polyfit(volumes, energies, 2)
    v0 = -b / (2 * a) if a > 0 else float(np.mean(volumes))
    start = (float(np.min(energies)), max(2 * a * v0, 1e-3), 4.0, float(v0))
    params, _ = curve_fit(birchmurnaghan, volumes, energies, p0=start, maxfev=20_000)
    return tuple(float(p) for p in params)  # type: ignore[return-value]


def check_elements(elements: list[str]) -> None:
    """Refuse element symbols that name none of the Delta test's 71 crystals."""
    from ase.collections import dcdft

    unknown = [e for e in elements if e not in dcdft.names]
    if unknown:
        raise ConfigError(
            f"--elements: {', '.join(unknown)} not among the Delta test's crystals "
            f"({' '.join(dcdft.names)})"
        )


def run(subject: Subject, elements: list[str] | None = None) -> dict[str, Any]:
    """Score ``subject`` on the Delta test's crystals (all 71, or ``elements``); elements it
    does not cover are listed, not scored."""
    from ase.collections import dcdft

    rows: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    atoms_done, seconds = 0, 0.0
    check_elements(elements or [])
    for symbol in elements or list(dcdft.names):
        crystal = dcdft[symbol]
        ref = dcdft.data[symbol]
        if not subject.covers(crystal.get_chemical_symbols()):
            skipped.append(symbol)
            continue
        n = len(crystal)
        base = crystal.get_volume() / n
        volumes = SCALES * ref["wien2k_volume"]
        energies = []
        try:
            for v in volumes:
                atoms = crystal.copy()
                atoms.set_cell(crystal.cell[:] * (v / base) ** (1 / 3), scale_atoms=True)
                started = time.perf_counter()
                energies.append(subject.energy(atoms) / n)
                seconds += time.perf_counter() - started
                atoms_done += n
        except Exception as exc:  # the calculator's own failure: recorded, the others go on
            rows[symbol] = {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        rows[symbol] = scored(volumes, np.array(energies), ref, n)
    return {
        "elements": rows,
        "not_covered": skipped,
        **summary(rows),
        "atoms_per_s": _rate(atoms_done, seconds),
    }


def scored(
    volumes: np.ndarray, energies: np.ndarray, ref: dict[str, float], atoms_in_cell: int
) -> dict[str, Any]:
    """One element's row: its curve (Å³/atom, eV/atom), the WIEN2k reference (``ref``: ASE's
    ``dcdft.data`` entry), and the fit with its errors, or why there is none."""
    from ase.utils.deltacodesdft import delta

    row: dict[str, Any] = {
        "atoms_in_cell": atoms_in_cell,
        "volumes_A3_per_atom": volumes.round(4).tolist(),
        "energies_eV_per_atom": energies.round(6).tolist(),
        "wien2k": {
            "V0_A3_per_atom": ref["wien2k_volume"],
            "B0_GPa": ref["wien2k_B"],
            "B1": ref["wien2k_Bp"],
        },
    }
    try:
        _, b0, b1, v0 = fit(volumes, energies)
    except (RuntimeError, ValueError) as exc:  # no minimum near the reference volume
        row["fit_failed"] = str(exc).splitlines()[0]
        return row
    span = volumes[-1] - volumes[0]
    if b0 <= 0 or not volumes[0] - span <= v0 <= volumes[-1] + span:
        # a curve still falling (or rising) far past the ends of the scan: its fitted V0 is
        # an extrapolation, even a negative one, not a volume. Within one scan width beyond
        # an end (0.82–1.18 of the reference) a convex fit is kept, as the Delta test's own
        # fits are: a code 7 % off the reference still has a measured error.
        row["fit_failed"] = (
            f"no minimum within {volumes[0] - span:.2f}–{volumes[-1] + span:.2f} Å³/atom, "
            f"the scan and one scan width beyond it (the fit puts V0 at {v0:.2f}, "
            f"B0 at {b0 / GPa:.1f} GPa)"
        )
        return row
    row.update(
        V0_A3_per_atom=round(v0, 4),
        B0_GPa=round(b0 / GPa, 2),
        B1=round(b1, 3),
        V0_error_percent=round(100 * (v0 / ref["wien2k_volume"] - 1), 3),
        B0_error_percent=round(100 * (b0 / GPa / ref["wien2k_B"] - 1), 3),
        delta_meV_per_atom=round(
            1000 * delta(v0, b0, b1, ref["wien2k_volume"], ref["wien2k_B"] * GPa, ref["wien2k_Bp"]),
            3,
        ),
    )
    return row


def rescored(result: dict[str, Any]) -> dict[str, Any]:
    """A dcdft result (``run``'s, read back from bench.json) with every stored curve fitted
    and summarised again under the current rules: no calculator is run."""
    from ase.collections import dcdft

    rows = {
        symbol: row
        if "failed" in row
        else scored(
            np.array(row["volumes_A3_per_atom"]),
            np.array(row["energies_eV_per_atom"]),
            dcdft.data[symbol],
            row["atoms_in_cell"],
        )
        for symbol, row in result["elements"].items()
    }
    return {**result, "elements": rows, **summary(rows)}


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Medians over every scored element — |ΔV0| %, |ΔB0| %, Δ meV/atom — an element whose
    curve could not be fitted (or whose calculator failed) counted as the largest error, so
    that failing an element never improves a median (inf when more than half fail); and how
    many were fitted."""
    if not rows:
        return {"fitted": 0, "failed_fits": 0}
    fitted = [r for r in rows.values() if "V0_error_percent" in r]

    def column(key: str) -> np.ndarray:
        return np.array([abs(r[key]) if key in r else np.inf for r in rows.values()])

    deltas = np.array([r["delta_meV_per_atom"] for r in fitted])
    return {
        "fitted": len(fitted),
        "failed_fits": len(rows) - len(fitted),
        "median_abs_V0_error_percent": float(np.median(column("V0_error_percent"))),
        "median_abs_B0_error_percent": float(np.median(column("B0_error_percent"))),
        "median_delta_meV_per_atom": float(np.median(column("delta_meV_per_atom"))),
        "mean_delta_meV_per_atom": float(np.mean(deltas)) if len(fitted) else float("nan"),
    }


def _rate(atoms: int, seconds: float) -> float:
    return round(atoms / seconds, 1) if seconds > 0 else float("nan")
