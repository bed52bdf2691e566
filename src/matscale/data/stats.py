"""Dataset statistics computed in one streaming pass and merged across packing workers.

Per source: counts, per-element reference energies fitted by least squares
(E ≈ Σ_Z n_Z e_Z, from accumulated normal equations, so workers merge by addition), the
residual energy RMS after those references, force RMS, the mean neighbour count at the
store's cutoff, and the shortest distance seen per element pair (merged by minimum; what
inference compares a structure's contacts with, to say when a model extrapolates).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.structure import MAX_Z, Structure

NZ = MAX_Z + 1  # index by atomic number; row/column 0 stays unused


@dataclass
class SourceStats:
    """Additive accumulators of one source. ``merge`` adds another worker's."""

    n_structures: int = 0
    n_atoms: int = 0
    n_edges: int = 0
    n_energy: int = 0
    n_forces: int = 0  # atoms with force labels
    n_stress: int = 0
    force_sq: float = 0.0  # Σ |F|² over components, (eV/Å)²
    stress_sq: float = 0.0
    yty: float = 0.0  # Σ E², eV²
    xty: np.ndarray = field(default_factory=lambda: np.zeros(NZ))  # Σ n_Z E
    xtx: np.ndarray = field(default_factory=lambda: np.zeros((NZ, NZ)))  # Σ n_Z n_Z'
    element_atoms: np.ndarray = field(default_factory=lambda: np.zeros(NZ, dtype=np.int64))
    shortest: np.ndarray = field(default_factory=lambda: np.full((NZ, NZ), np.inf))
    """[Z_a, Z_b] (Z_a ≤ Z_b): the shortest distance seen between the two elements (Å)."""

    def add(self, s: Structure, n_edges: int, pairs: np.ndarray | None = None) -> None:
        """Account for one structure with ``n_edges`` directed neighbour pairs at the cutoff
        and, if given, its shortest distance per element pair (rows Z_a, Z_b, Å; see
        :func:`matscale.data.graph.edge_census`)."""
        if pairs is not None and len(pairs):
            za, zb = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
            self.shortest[za, zb] = np.minimum(self.shortest[za, zb], pairs[:, 2])
        counts = np.bincount(np.asarray(s.numbers), minlength=NZ)[:NZ]
        self.n_structures += 1
        self.n_atoms += s.n_atoms
        self.n_edges += n_edges
        self.element_atoms += counts
        if s.energy is not None:
            self.n_energy += 1
            self.yty += s.energy**2
            self.xty += counts * s.energy
            nz = np.nonzero(counts)[0]
            self.xtx[np.ix_(nz, nz)] += np.outer(counts[nz], counts[nz])
        if s.forces is not None:
            self.n_forces += s.n_atoms
            self.force_sq += float(np.sum(np.square(s.forces)))
        if s.stress is not None:
            self.n_stress += 1
            self.stress_sq += float(np.sum(np.square(s.stress)))

    def merge(self, other: SourceStats) -> None:
        """Add another accumulator of the same source into this one."""
        for f in fields(self):  # every accumulator adds, but the shortest distances
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, np.minimum(a, b) if f.name == "shortest" else a + b)

    def reference_energies(self) -> dict[int, float]:
        """Per-element energies e_Z (eV) minimising Σ (E − Σ_Z n_Z e_Z)².

        Minimum-norm solution where compositions leave them undetermined (a source of one
        molecule's conformers fixes only their weighted sum).
        """
        present = np.nonzero(self.element_atoms)[0]
        if self.n_energy == 0 or len(present) == 0:
            return {}
        a = self.xtx[np.ix_(present, present)]
        w = np.linalg.lstsq(a, self.xty[present], rcond=None)[0]
        return {int(z): float(e) for z, e in zip(present, w, strict=True)}

    def reference_energy_rank(self) -> int:
        """How many independent combinations of the element energies the compositions fix
        (the rank of their normal matrix); the number of elements when each is fixed."""
        present = np.nonzero(self.element_atoms)[0]
        if self.n_energy == 0 or len(present) == 0:
            return 0
        return int(np.linalg.matrix_rank(self.xtx[np.ix_(present, present)]))

    def summary(self) -> dict[str, Any]:
        """Derived statistics as plain JSON-able numbers (units in the key names)."""
        refs = self.reference_energies()
        out: dict[str, Any] = {
            "structures": self.n_structures,
            "atoms": self.n_atoms,
            "mean_atoms": self.n_atoms / max(self.n_structures, 1),
            "mean_neighbours": self.n_edges / max(self.n_atoms, 1),
            "with_energy": self.n_energy,
            "with_forces_atoms": self.n_forces,
            "with_stress": self.n_stress,
            "elements": {int(z): int(c) for z, c in enumerate(self.element_atoms) if c},
            "reference_energy_eV": refs,
            # below len(refs): some energies are fixed only in combination (elements whose
            # counts never vary apart, B and N of a boron nitride source), the split arbitrary
            "reference_energy_rank": self.reference_energy_rank(),
            "shortest_distance_A": {
                # rounded down: a recorded floor is never above a distance that was seen
                f"{za}-{zb}": math.floor(float(self.shortest[za, zb]) * 1e4) / 1e4
                for za, zb in zip(*np.nonzero(np.isfinite(self.shortest)), strict=True)
            },
        }
        if self.n_energy:
            z = np.array(sorted(refs))
            w = np.array([refs[int(k)] for k in z])
            rss = self.yty - 2 * w @ self.xty[z] + w @ self.xtx[np.ix_(z, z)] @ w
            out["energy_residual_rms_eV"] = float(np.sqrt(max(rss, 0.0) / self.n_energy))
        if self.n_forces:
            out["force_rms_eV_per_A"] = float(np.sqrt(self.force_sq / (3 * self.n_forces)))
        if self.n_stress:
            out["stress_rms_eV_per_A3"] = float(np.sqrt(self.stress_sq / (6 * self.n_stress)))
        return out


class StatsAccumulator:
    """Statistics of every source seen; saved to and loaded from ``.npz`` to merge parts."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceStats] = {}

    def add(self, s: Structure, n_edges: int, pairs: np.ndarray | None = None) -> None:
        """Account for one structure (``pairs``: see :meth:`SourceStats.add`)."""
        self.sources.setdefault(s.source, SourceStats()).add(s, n_edges, pairs)

    def merge(self, other: StatsAccumulator) -> None:
        """Add another worker's statistics."""
        for name, st in other.sources.items():
            self.sources.setdefault(name, SourceStats()).merge(st)

    def summary(self) -> dict[str, dict[str, Any]]:
        """Derived statistics per source."""
        return {name: st.summary() for name, st in sorted(self.sources.items())}

    def save(self, path: Path) -> None:
        """Write the raw accumulators (exact, mergeable) to ``path`` (.npz)."""
        arrays: dict[str, np.ndarray] = {}
        for i, (name, st) in enumerate(sorted(self.sources.items())):
            arrays[f"{i}/name"] = np.array(name)
            for key, value in st.__dict__.items():
                arrays[f"{i}/{key}"] = np.asarray(value)
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> StatsAccumulator:
        """Read accumulators written by :meth:`save`."""
        acc = cls()
        with np.load(path) as data:
            n = len({k.split("/")[0] for k in data.files})
            for i in range(n):
                st = SourceStats()
                for key in st.__dict__:
                    if f"{i}/{key}" not in data.files:  # written before the field existed
                        continue
                    value = data[f"{i}/{key}"]
                    setattr(st, key, value.copy() if value.ndim else value.item())
                acc.sources[str(data[f"{i}/name"])] = st
        return acc
