"""How a structure becomes a model's input graph: :class:`GraphSettings`, one object.

Training's :class:`~matscale.data.batch.GraphDataset` and every inference path (the ASE
calculator, batched prediction, ``matscale eval``, torch-sim) build graphs through the same
:meth:`GraphSettings.sample`, and the settings are saved in the model file, so a model is
always fed graphs made the way it was trained on: the same cutoff, the same neighbour limit,
the same heads, and only elements its head has seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from ase.data import chemical_symbols

from matscale.data.batch import graph_sample
from matscale.data.graph import extent_problem, model_positions
from matscale.data.structure import MAX_Z, MIN_DISTANCE, Structure, cell_problem
from matscale.errors import DataError, ExtrapolationWarning

#: How much closer than the shortest training distance a contact must be to be warned about
#: (Å): geometry is stored in float32 and the statistics rounded, so the training data's own
#: closest pairs must not trip it.
CONTACT_TOLERANCE_A = 1e-3
#: Floating dtypes a model's geometry may have at inference.
GeometryDtype = Literal["float32", "float64"]


@dataclass(frozen=True, kw_only=True)
class GraphSettings:
    """The inference transform: everything, besides the weights, that decides a model's input.

    Parameters
    ----------
    cutoff: graph radius (Å); the model's own cutoff.
    max_neighbours: nearest neighbours kept per atom (None: all within the cutoff).
    heads: readout heads (data sources, i.e. levels of theory) in the model's order.
    elements: per head, the atomic numbers its training data held; any other element is
        refused (the model has no reference energy and no learned chemistry for it).
    dtype: floating dtype of geometry and of the network at inference.
    shortest: per head, (Z_a, Z_b, d) with Z_a ≤ Z_b: the shortest distance (Å) between the
        two elements in the training data's store. A closer contact at inference raises an
        :class:`~matscale.errors.ExtrapolationWarning` once per head and pair (empty for
        models saved before it was recorded: no warning).
    """

    cutoff: float
    max_neighbours: int | None = None
    heads: tuple[str, ...]
    elements: tuple[tuple[int, ...], ...]
    dtype: GeometryDtype = "float32"
    shortest: tuple[tuple[tuple[int, int, float], ...], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "elements", tuple(tuple(int(z) for z in e) for e in self.elements))
        object.__setattr__(
            self,
            "shortest",
            tuple(tuple((int(a), int(b), float(d)) for a, b, d in h) for h in self.shortest),
        )
        if self.shortest and len(self.shortest) != len(self.heads):
            raise ValueError(
                f"{len(self.heads)} heads but shortest distances for {len(self.shortest)}"
            )
        if len(self.elements) != len(self.heads):
            raise ValueError(f"{len(self.heads)} heads but element lists for {len(self.elements)}")
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")

    @classmethod
    def from_stats(
        cls,
        *,
        cutoff: float,
        max_neighbours: int | None,
        heads: tuple[str, ...],
        stats: Mapping[str, Mapping[str, Any]],
        dtype: GeometryDtype = "float32",
    ) -> GraphSettings:
        """Settings whose per-head elements are those in a store's statistics (``stats[source]
        ["elements"]``, written by ``matscale data pack``)."""
        elements = tuple(
            tuple(sorted(int(z) for z in stats.get(h, {}).get("elements", {}))) for h in heads
        )
        shortest = tuple(
            tuple(
                _pair_floor(pair, d)
                for pair, d in sorted(stats.get(h, {}).get("shortest_distance_A", {}).items())
            )
            for h in heads
        )
        return cls(
            cutoff=cutoff,
            max_neighbours=max_neighbours,
            heads=heads,
            elements=elements,
            dtype=dtype,
            shortest=shortest if any(shortest) else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and scalars, for the model file."""
        d = asdict(self)
        d["heads"], d["elements"] = list(self.heads), [list(e) for e in self.elements]
        d["shortest"] = [[list(p) for p in h] for h in self.shortest]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphSettings:
        """Inverse of :meth:`to_dict`."""
        return cls(
            cutoff=float(data["cutoff"]),
            max_neighbours=data.get("max_neighbours"),
            heads=tuple(data["heads"]),
            elements=tuple(tuple(e) for e in data["elements"]),
            dtype=data.get("dtype", "float32"),
            shortest=tuple(tuple(tuple(p) for p in h) for h in data.get("shortest", ())),
        )

    def head_index(self, head: str | None) -> int:
        """Index of the head named ``head``; ``None`` picks the only head."""
        if head is None:
            if len(self.heads) == 1:
                return 0
            raise DataError(
                f"this model has {len(self.heads)} heads (levels of theory): "
                f"{', '.join(self.heads)}; choose one (--head on the command line, head= in "
                "Python)",
                field="head",
            )
        if head not in self.heads:
            raise DataError(
                f"no head named {head!r}; this model's heads are {', '.join(self.heads)}",
                field="head",
            )
        return self.heads.index(head)

    def check_elements(
        self, numbers: np.ndarray, head: int, *, file: str | None = None, record: Any = None
    ) -> None:
        """Refuse elements that head ``head`` never saw in training, naming them."""
        z = np.asarray(numbers)
        known = self.known_elements[head]
        if len(z) and z.min() >= 0 and z.max() <= MAX_Z and known[z].all():
            return  # the common case, a table lookup (every training sample passes here)
        seen = self.elements[head]
        unseen = np.setdiff1d(z, np.asarray(seen, dtype=np.int64))
        if len(unseen):
            names = ", ".join(f"{element_symbol(z)} (Z={z})" for z in unseen)
            raise DataError(
                f"element {names} never appeared in the training data of head "
                f"{self.heads[head]!r}, which knows {', '.join(element_symbol(z) for z in seen)}",
                file=file,
                record=record,
                field="numbers",
                kind="unknown-element",
            )

    def sample(
        self,
        s: Structure,
        head: int,
        *,
        index: int = -1,
        file: str | None = None,
        packed: bool = False,
    ) -> dict[str, np.ndarray]:
        """``s`` as the model's graph sample (numpy arrays; see :func:`collate`), read by head
        ``head``. Raises :class:`DataError` for elements the head never saw, non-finite or
        flown-away positions and degenerate periodic cells, and atoms on top of each other;
        warns about contacts shorter than training's. ``packed``: ``s`` comes from a packed
        store, whose structures passed all of that when packed
        (:func:`~matscale.data.structure.check_structure`) and whose statistics set the contact
        floors, so only the elements are checked (the rest cost training a fifth of its
        graph building: ~75 µs of ~0.45 ms per structure)."""
        record = s.key or (index if index >= 0 else None)
        self.check_elements(s.numbers, head, file=file, record=record)
        if not packed:
            check_geometry(s, file=file, record=record)
        sample = graph_sample(
            s,
            self.cutoff,
            max_neighbours=self.max_neighbours,
            source=head,
            index=index,
            dtype=np.dtype(self.dtype).type,
        )
        if not packed:
            self.check_contacts(s, sample["edge_index"], sample["shifts"], head, file, record)
        return sample

    @cached_property
    def known_elements(self) -> tuple[np.ndarray, ...]:
        """Per head, [MAX_Z + 1] bool: the elements its training data held (built once)."""
        tables = []
        for seen in self.elements:
            table = np.zeros(MAX_Z + 1, dtype=bool)
            table[list(seen)] = True
            tables.append(table)
        return tuple(tables)

    @cached_property
    def shortest_tables(self) -> tuple[np.ndarray, ...]:
        """Per head, [MAX_Z + 1, MAX_Z + 1] shortest training distance (Å) per element pair,
        symmetric, 0 for pairs never seen (no warning for them); built once (MD checks every
        step)."""
        tables = []
        for pairs in self.shortest:
            table = np.zeros((MAX_Z + 1, MAX_Z + 1))
            for a, b, d in pairs:
                table[a, b] = table[b, a] = d
            tables.append(table)
        return tuple(tables)

    def check_contacts(
        self,
        s: Structure,
        edge_index: np.ndarray,
        shifts: np.ndarray,
        head: int,
        file: str | None = None,
        record: Any = None,
    ) -> None:
        """Raise :class:`DataError` when two atoms of ``s`` (periodic images included) are
        closer than :data:`~matscale.data.structure.MIN_DISTANCE` (the floor every training
        structure is held to: atoms on top of each other have no direction for a force), naming
        both; warn (:class:`ExtrapolationWarning`, once per head and element pair) when they
        are closer than any two of those elements in head ``head``'s training data."""
        if edge_index.shape[1] == 0:
            return
        i, j = edge_index
        # the positions the graph was built on (graph_sample's; the same bits here)
        positions = model_positions(s.positions, s.cell, s.pbc)
        vectors = positions[j] - positions[i] + shifts.astype(np.float64) @ np.asarray(s.cell)
        d = np.linalg.norm(vectors, axis=1)
        nearest = int(np.argmin(d))
        if d[nearest] < MIN_DISTANCE:
            a, b = sorted((int(i[nearest]), int(j[nearest])))
            raise DataError(
                f"atoms {a} and {b} are {d[nearest]:.3g} Å apart (< {MIN_DISTANCE} Å): "
                "on top of each other",
                file=file,
                record=record,
                field="positions",
            )
        if not self.shortest:
            return
        z = np.asarray(s.numbers)
        table = self.shortest_tables[head]
        floor = table[z[i], z[j]]
        close = d < floor - CONTACT_TOLERANCE_A
        if not close.any():
            return
        for za, zb in {tuple(sorted(p)) for p in zip(z[i][close], z[j][close], strict=True)}:
            # the message names the pair and the floor, not the distance, so that Python's
            # warning filter shows it once per pair rather than at every MD step
            warnings.warn(
                f"a {element_symbol(za)}-{element_symbol(zb)} contact shorter than "
                f"{table[za, zb]:.2f} Å, "
                f"the shortest in head {self.heads[head]!r}'s training data: the model "
                "extrapolates there: treat energies, forces and stress from here on as unknown "
                "(a pair prior keeps only much shorter contacts repulsive)",
                ExtrapolationWarning,
                stacklevel=3,
            )


def _pair_floor(pair: str, d: float) -> tuple[int, int, float]:
    """``("29-79", 1.9)`` from the statistics → ``(29, 79, 1.9)``."""
    a, b = pair.split("-")
    return int(a), int(b), float(d)


def check_geometry(s: Structure, *, file: str | None = None, record: Any = None) -> None:
    """The cheap geometry checks inference needs on every call (no neighbour search):
    at least one atom, finite positions and cell, and a usable periodic cell
    (:func:`~matscale.data.structure.cell_problem`, the checks training data passes too)."""
    if len(s.numbers) == 0:
        raise DataError("structure has no atoms", file=file, record=record, field="numbers")
    positions = np.asarray(s.positions)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise DataError(
            f"expected positions of shape [n, 3], got {positions.shape}",
            file=file,
            record=record,
            field="positions",
        )
    if not np.all(np.isfinite(positions)):
        raise DataError("contains NaN or inf", file=file, record=record, field="positions")
    pbc = np.asarray(s.pbc, dtype=bool)
    far = extent_problem(positions)
    if far:
        raise DataError(far, file=file, record=record, field="positions")
    if not pbc.any():
        return
    cell = np.asarray(s.cell, dtype=np.float64)
    if not np.all(np.isfinite(cell)):
        raise DataError("contains NaN or inf", file=file, record=record, field="cell")
    problem = cell_problem(cell, pbc)
    if problem:
        raise DataError(problem[0], file=file, record=record, field="cell")


def element_symbol(z: int) -> str:
    """The chemical symbol of atomic number ``z`` for a message (``Z119`` beyond the table)."""
    z = int(z)
    if z == 0:  # ASE's "X": a ghost or dummy atom, which no model has an energy for
        return "X (a dummy atom)"
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"
