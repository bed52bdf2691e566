"""Radius graphs with periodic images (vesin): a pure function of geometry.

Convention used everywhere in matscale: an edge ``(i, j)`` with cell shift ``S`` points from
the centre atom ``i`` to its neighbour ``j``, whose image sits at
``positions[j] + S @ cell``. The edge vector is ``r_ij = positions[j] − positions[i] + S @ cell``
(Å). Lists are *full*: both ``(i, j)`` and ``(j, i)`` appear. An atom sees its own periodic
images when the cell is smaller than the cutoff.
"""

from __future__ import annotations

import numpy as np
from vesin import NeighborList

from matscale.errors import DataError

#: The farthest an atom may lie from the origin along any axis (Å), checked on the positions as
#: given. The model's float32 geometry does not need it (graphs are built on positions wrapped
#: and centred first: :func:`model_positions`), but vesin's cell list stops the whole process
#: (SIGFPE, no Python error) when atoms lie ~5e5 Å apart along a line (vesin 0.4), and ten
#: micrometres is past any structure an atomistic model describes: an atom there has flown
#: away (an MD run blown up by too long a timestep, say).
MAX_EXTENT_A = 1e5


#: Structures of fewer atoms are searched on one thread. vesin's default, a thread per core,
#: costs more than it saves on small cells and competes with torch's own threads: on the
#: default data's structures (18 atoms on average) one thread took 93 µs per structure against
#: 144; threads pay from a few hundred atoms (250: 1.18 against 1.29 ms; 4,000: 8.0 against
#: 15.0 ms on 2 cores).
THREADED_FROM_ATOMS = 256


def neighbour_list(cutoff: float, n_atoms: int, *, full: bool) -> NeighborList:
    """vesin's neighbour list at ``cutoff`` (Å), full (both (i, j) and (j, i)) or half, on one
    thread for fewer than :data:`THREADED_FROM_ATOMS` atoms and on every core from there."""
    threads = 0 if n_atoms >= THREADED_FROM_ATOMS else 1  # 0: vesin's default, all cores
    return NeighborList(cutoff=float(cutoff), full_list=full, n_threads=threads)


def extent_problem(positions: np.ndarray) -> str | None:
    """Why ``positions`` [n, 3] (Å) are refused, or None: an atom farther than
    :data:`MAX_EXTENT_A` from the origin along an axis."""
    p = np.abs(np.asarray(positions, dtype=np.float64))
    if p.size == 0:
        return None
    far = p.max(axis=0)
    axis = int(np.argmax(far))
    if not far[axis] > MAX_EXTENT_A:  # also true for NaN: finiteness is checked elsewhere
        return None
    return (
        f"an atom lies {far[axis]:.3g} Å from the origin along {'xyz'[axis]}, more than "
        f"{MAX_EXTENT_A:.0e} Å: it has flown away (an MD run that blew up, or positions in the "
        "wrong unit)"
    )


def face_separations(lattice: np.ndarray) -> np.ndarray:
    """For each of the k periodic lattice vectors ``lattice`` [k, 3] (Å), its distance (Å) from
    the span of the others: how far apart the periodic images are along it (k = 3: the cell's
    face separations, V / |b × c|; k = 2: |a × b| / |b|; k = 1: |a|). A neighbour search needs
    cutoff / separation images along it, so a tiny one is a degenerate cell (parallel periodic
    vectors kill vesin's cell list, nearly parallel ones make it search forever)."""
    gram = lattice @ lattice.T
    whole = float(np.linalg.det(gram))
    out = np.empty(len(lattice))
    for m in range(len(lattice)):
        rest = np.delete(np.delete(gram, m, axis=0), m, axis=1)
        minor = float(np.linalg.det(rest)) if len(rest) else 1.0
        out[m] = np.sqrt(max(whole, 0.0) / minor) if minor > 0 else 0.0
    return out


def wrap_positions(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """``positions`` [n, 3] (Å) moved by whole lattice vectors into the cell along its periodic
    directions (fractional coordinates in [0, 1)), in float64; as they are where none is
    periodic. The same structure to the model (its periodic images), and the reason to do it:
    the network's geometry is float32, whose spacing is 0.001 Å at 10⁴ Å from the origin, so
    atoms an MD run lets diffuse unwrapped would lose digits in their edge vectors. A pure
    function: the same input gives the same bits, so checks that recompute it agree with the
    graph built on it. ``cell``: [3, 3] rows; those of non-periodic directions are ignored
    (zero, or anything). Degenerate periodic vectors are left to the checks that name them:
    positions come back unwrapped."""
    p = np.asarray(positions, dtype=np.float64)
    periodic = np.asarray(pbc, dtype=bool)
    if not periodic.any() or len(p) == 0:
        return p
    box = np.array(cell, dtype=np.float64)
    lattice = box[periodic]
    if not np.isfinite(lattice).all():
        return p
    if not periodic.all():  # open directions: unit vectors orthogonal to the periodic ones
        box[~periodic] = np.linalg.svd(lattice)[2][len(lattice) :]
    volume = abs(np.linalg.det(box))
    if not np.isfinite(volume) or volume <= 1e-9 * np.prod(np.linalg.norm(lattice, axis=1)):
        return p
    fractional = np.linalg.solve(box.T, p.T).T
    whole = np.where(periodic, np.floor(fractional), 0.0)
    return p - whole @ box


def model_positions(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The positions [n, 3] (Å, float64) a graph is built on: wrapped into the cell along
    periodic directions (:func:`wrap_positions`), then, when any direction is open, moved as
    a whole so that their centroid is at the origin. Both move atoms by lattice vectors or
    the whole structure by one vector, which changes no energy, force or stress; both keep
    the float32 geometry's digits, whose spacing is 0.001 Å at 10⁴ Å from the origin (a
    cluster 9·10⁴ Å out had force errors of 47 meV/Å before it was centred). A pure
    function: the same input gives the same bits, so checks that recompute it agree with the
    graph built on it."""
    p = wrap_positions(positions, cell, pbc)
    if np.asarray(pbc, dtype=bool).all() or len(p) == 0:
        return p
    return p - p.mean(axis=0)


def radius_graph(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    max_neighbours: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` (Å), periodic images included.

    Parameters
    ----------
    positions: [n_atoms, 3] Å.
    cell: [3, 3] Å, lattice vectors as rows (ignored along non-periodic directions).
    pbc: [3] bool.
    cutoff: Å.
    max_neighbours: keep only this many nearest neighbours per centre atom (the paper used 50);
        ``None`` keeps all. Ties are broken by the order vesin returns, deterministically.

    Returns
    -------
    edge_index: [2, n_edges] int64, rows (centre i, neighbour j), sorted by centre; each
        centre's edges in vesin's order (reproducible), or by distance with max_neighbours.
    shifts: [n_edges, 3] int64, integer cell shifts S.
    """
    pbc = np.asarray(pbc, dtype=bool)
    why = extent_problem(positions)
    if why:  # before vesin, which would kill the process
        raise DataError(why, field="positions")
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    nl = neighbour_list(cutoff, len(positions), full=True)
    points = np.asarray(positions, dtype=np.float64)
    # vesin's order is reproducible but not by centre: sort by centre (stable, so each
    # centre's edges keep vesin's order), or by centre then distance for max_neighbours to
    # keep the nearest ones (2.8x the time of the stable sort on the default data's cells);
    # distances are asked for only then (each array vesin returns costs ~10 µs to wrap)
    if max_neighbours is None:
        i, j, s = nl.compute(points=points, box=box, periodic=pbc, quantities="ijS")
        order = np.argsort(i, kind="stable")
    else:
        i, j, s, d = nl.compute(points=points, box=box, periodic=pbc, quantities="ijSd")
        order = np.lexsort((d, i))
    edge_index = np.empty((2, len(i)), dtype=np.int64)
    edge_index[0], edge_index[1], shifts = i[order], j[order], s[order].astype(np.int64)
    if max_neighbours is not None and len(i):
        first = np.searchsorted(edge_index[0], edge_index[0], side="left")  # a centre's first
        keep = (np.arange(len(i)) - first) < max_neighbours
        edge_index, shifts = edge_index[:, keep], shifts[keep]
    return edge_index, shifts


def count_edges(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> int:
    """Number of directed edges of :func:`radius_graph` (no max_neighbours), cheaply."""
    return edge_census(positions, cell, pbc, cutoff, None)[0]


def edge_census(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    numbers: np.ndarray | None,
) -> tuple[int, np.ndarray]:
    """Number of directed edges of :func:`radius_graph` (no max_neighbours), and with
    ``numbers`` the pairs' shortest distances: [k, 3] rows (Z_a, Z_b, d in Å), Z_a ≤ Z_b, one
    per element pair present within the cutoff (empty without ``numbers``)."""
    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    points = np.asarray(positions, np.float64)
    nl = neighbour_list(cutoff, len(points), full=False)
    if numbers is None:
        (i,) = nl.compute(points=points, box=box, periodic=pbc, quantities="i")
        return 2 * len(i), np.zeros((0, 3))
    i, j, d = nl.compute(points=points, box=box, periodic=pbc, quantities="ijd")
    z = np.asarray(numbers, dtype=np.int64)
    za, zb = np.minimum(z[i], z[j]), np.maximum(z[i], z[j])
    key = za * 1000 + zb
    order = np.lexsort((d, key))  # per pair, shortest first
    key, d = key[order], d[order]
    first = np.unique(key, return_index=True)[1]
    pairs = np.stack([key[first] // 1000, key[first] % 1000, d[first]], axis=1)
    return 2 * len(i), pairs
