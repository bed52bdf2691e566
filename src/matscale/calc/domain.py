"""One structure spread over processes: spatial domain decomposition for inference.

Each process of a ``torch.distributed`` group (gloo on CPUs, NCCL on GPUs) owns one slab of
the structure along one axis and builds the graph of its slab plus *ghost* atoms: every atom
(or periodic image) within ``depth × cutoff`` of the slab along that axis, the model's
receptive field. The slab's atoms see exactly the neighbourhood they see in the whole
structure, so their atomic energies are exact. Then, with ``E_r`` the sum of the owned atoms'
energies of process ``r``:

- energy ``E = Σ_r E_r`` (an all-reduce of one number);
- forces ``F = −Σ_r ∂E_r/∂x``: the gradient on a ghost belongs to the atom it is an image of,
  so each process adds its gradients into a global [N, 3] array and the arrays are summed;
- stress ``σ = (1/V) Σ_r ∂E_r/∂ε``: ghosts are explicit positions that the strain moves like
  any other, and the cell is the global one, so the virials add up.

What each process holds in memory is its slab's graph and activations, the part that grows
with atoms × neighbours × width; positions, numbers and the result arrays ([N, 3]) are kept
whole on every process (a few dozen bytes per atom), which is what lets ASE run the same MD
script on every rank (the LAMMPS-like "replicated atoms, distributed work"). Results equal
the single-process model to float32 round-off (tests/calc/test_domain.py, 2 processes,
periodic and not).

The slab axis is the periodic cell vector along which the atoms span the most (the cell's
perpendicular width less its largest empty gap: a slab with vacuum along a periodic axis is
not cut through its vacuum), or without periodicity the Cartesian axis of largest extent;
the cuts give every process the same number of atoms (one more at most). Along that axis each
local structure is not periodic (its images are explicit ghosts); the other two axes keep the
structure's periodicity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from matscale.calc.inference import as_structure, head_for, predict_graph
from matscale.calc.model_file import Potential
from matscale.data.atomgraph import AtomGraph
from matscale.data.batch import collate
from matscale.data.structure import Structure

#: Added to ``depth × cutoff`` (Å): a ghost exactly at the receptive field's edge must be in.
HALO_MARGIN = 1e-3


@dataclass(frozen=True)
class Domain:
    """The part of a structure one process computes.

    ``structure`` is the local structure (owned atoms first, then ghosts; not periodic along
    ``axis``; -1 for one process: the structure as it is); ``index`` [n_local] maps each
    local atom to the atom of the whole structure it is (an image of); ``owned`` [n_local]
    marks the atoms whose energies this process adds."""

    structure: Structure
    index: np.ndarray
    owned: np.ndarray
    axis: int

    @property
    def n_owned(self) -> int:
        return int(self.owned.sum())

    @property
    def n_ghosts(self) -> int:
        return int((~self.owned).sum())


def halo(potential: Potential) -> float:
    """The receptive field of ``potential``'s model (Å): ``depth × cutoff``."""
    cfg = potential.model.config
    return cfg.depth * cfg.cutoff + HALO_MARGIN


def decompose(s: Structure, rank: int, world: int, halo_A: float) -> Domain:
    """Process ``rank``'s domain of ``s`` cut into ``world`` slabs of equal atom counts, with
    ghosts within ``halo_A`` Å of its slab. A rank with no atom (more ranks than atoms) gets
    an empty domain."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    n = len(s.numbers)
    if world == 1:  # the whole structure, periodic as it is: no ghosts needed
        return Domain(structure=s, index=np.arange(n), owned=np.ones(n, dtype=bool), axis=-1)
    cell, pbc = np.asarray(s.cell, float), np.asarray(s.pbc, bool)
    positions = np.asarray(s.positions, float)
    axis, coord, width, step, moved = _slab_axis(positions, cell, pbc)
    periodic = bool(pbc[axis])
    positions = positions + moved[:, None] * step[None, :]  # each atom at its coordinate
    order = np.argsort(coord, kind="stable")
    first, last = rank * n // world, (rank + 1) * n // world
    mine = np.zeros(n, dtype=bool)
    mine[order[first:last]] = True
    if not mine.any():
        return Domain(
            structure=replace(s, numbers=s.numbers[:0], positions=positions[:0]),
            index=np.zeros(0, dtype=np.int64),
            owned=np.zeros(0, dtype=bool),
            axis=axis,
        )
    lo, hi, reach = coord[mine].min(), coord[mine].max(), halo_A / width
    images = int(np.ceil(reach)) + 1 if periodic else 0
    local, shifts = [np.flatnonzero(mine)], [np.zeros(int(mine.sum()), dtype=int)]
    for k in range(-images, images + 1):
        shifted = coord + k
        ghost = (shifted >= lo - reach) & (shifted <= hi + reach)
        if k == 0:
            ghost &= ~mine
        local.append(np.flatnonzero(ghost))
        shifts.append(np.full(int(ghost.sum()), k))
    index = np.concatenate(local)
    pos = positions[index] + np.concatenate(shifts)[:, None] * step[None, :]
    local_pbc = pbc.copy()
    local_pbc[axis] = False
    structure = Structure(
        numbers=np.asarray(s.numbers)[index],
        positions=pos,
        cell=cell,
        pbc=local_pbc,
        source=s.source,
        key=s.key,
    )
    owned = np.zeros(len(index), dtype=bool)
    owned[: len(local[0])] = True
    return Domain(structure=structure, index=index, owned=owned, axis=axis)


def _fractional(positions: np.ndarray, cell: np.ndarray, axis: int) -> np.ndarray:
    """Fractional coordinate [N] along cell vector ``axis`` (zero vectors of non-periodic
    directions completed by orthogonal unit vectors, as ASE does)."""
    from ase.geometry import complete_cell

    return np.linalg.solve(complete_cell(cell).T, positions.T).T[:, axis]


def _slab_axis(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray
) -> tuple[int, np.ndarray, float, np.ndarray, np.ndarray]:
    """The axis to cut along, each atom's coordinate along it, the length (Å) one unit of that
    coordinate spans, the cell vector an image is shifted by (zero if not periodic), and by
    how many of those vectors each atom moves to sit at its coordinate (wrapping).

    Periodic axes come first, and among them the one whose atoms span the most: the
    perpendicular width of the cell less its largest empty gap (a slab with vacuum along a
    periodic axis is not cut along its vacuum). Coordinates are fractional, rotated so that
    the largest gap straddles the cell boundary. Without a periodic axis: the Cartesian axis
    of largest extent."""
    if pbc.any():
        from ase.geometry import complete_cell

        full = complete_cell(cell)
        widths = np.abs(np.linalg.det(full)) / np.linalg.norm(
            np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=1
        )  # perpendicular width of the cell along each vector
        best: tuple[float, int, np.ndarray, np.ndarray] | None = None
        for a in np.flatnonzero(pbc):
            f = _fractional(positions, cell, int(a))
            u = f - np.floor(f)
            ordered = np.sort(u)
            gaps = np.diff(np.concatenate([ordered, ordered[:1] + 1.0]))
            g = int(np.argmax(gaps))
            start = ordered[(g + 1) % len(ordered)]  # the first atom after the largest gap
            span = widths[a] * (1.0 - gaps[g])
            coord = (u - start) % 1.0
            if best is None or span > best[0] + 1e-9:
                best = (span, int(a), coord, np.rint(coord + start - f))
        assert best is not None
        _, axis, coord, moved = best
        return axis, coord, float(widths[axis]), cell[axis].copy(), moved
    extent = positions.max(0) - positions.min(0)
    axis = int(np.argmax(extent))
    coord = positions[:, axis] - positions[:, axis].min()
    return axis, coord, 1.0, np.zeros(3), np.zeros(len(positions))


def predict_domain(
    potential: Potential,
    item: object,
    *,
    head: str | None = None,
    stress: bool = False,
    group: dist.ProcessGroup | None = None,
) -> dict[str, np.ndarray | float]:
    """Energy (eV), atomic energies [N] (eV), forces [N, 3] (eV/Å) and, with ``stress``,
    stress [6] (eV/Å³, Voigt) of one structure (``ase.Atoms`` or :class:`Structure`),
    computed by every process of ``group`` (the default group if None) on its own domain.
    Every process must call it with the same structure; each gets the whole result."""
    s = as_structure(item)  # type: ignore[arg-type]
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    flat = domain_terms(potential, s, rank, world, head=head, stress=stress)
    dist.all_reduce(flat, group=group)  # one message: forces, energies, stress
    return unpack(flat, len(s.numbers), stress=stress)


def domain_terms(
    potential: Potential,
    s: Structure,
    rank: int,
    world: int,
    *,
    head: str | None = None,
    stress: bool = False,
) -> torch.Tensor:
    """Process ``rank``'s share of the results, flat (float64): forces [N·3] (eV/Å, from its
    owned energies, on every atom its domain holds an image of), atomic energies [N] (eV, its
    owned atoms), then stress [6] (eV/Å³) if asked. Summed over ranks they are the results of
    the whole structure (:func:`unpack` reads them)."""
    if not potential.conservative:
        raise ValueError("domain decomposition needs a conservative model (forces = −∂E/∂x)")
    domain = decompose(s, rank, world, halo(potential))
    n = len(s.numbers)
    size = 4 * n + (6 if stress else 0)
    if not domain.n_owned:  # more processes than atoms: this one adds nothing
        return torch.zeros(size, dtype=torch.float64, device=potential.device)
    head_index = head_for(potential, s, head)
    graph = collate([potential.graph.sample(domain.structure, head_index)])
    # the stress of the local graph is the strain derivative of the owned energies: the
    # physics code reports it for cells periodic in x, y and z, which the whole structure is
    graph = _with_pbc(graph, np.asarray(s.pbc, bool))
    owned = torch.from_numpy(domain.owned).to(potential.device)
    out = predict_graph(potential, graph, forces=True, stress=stress, owned=owned)
    device = out["forces"].device
    index = torch.from_numpy(domain.index).to(device)
    forces = torch.zeros(n, 3, dtype=torch.float64, device=device)
    forces.index_add_(0, index, out["forces"].double())
    energies = torch.zeros(n, dtype=torch.float64, device=device)
    energies.index_add_(0, index[owned], out["node_energy"].double()[owned])
    parts = [forces.reshape(-1), energies]
    if stress:
        parts.append(out["stress"][0].double())
    return torch.cat(parts)


def unpack(flat: torch.Tensor, n: int, *, stress: bool) -> dict[str, np.ndarray | float]:
    """The results dict of the summed :func:`domain_terms` of a structure of ``n`` atoms."""
    values = flat.cpu().numpy()
    result: dict[str, np.ndarray | float] = {
        "forces": values[: 3 * n].reshape(n, 3),
        "energies": values[3 * n : 4 * n],
    }
    result["energy"] = float(values[3 * n : 4 * n].sum())
    if stress:
        result["stress"] = values[4 * n :]
    return result


def _with_pbc(graph: AtomGraph, pbc: np.ndarray) -> AtomGraph:
    """``graph`` reporting ``pbc`` (the whole structure's) instead of the local one."""
    flags = torch.as_tensor(pbc, dtype=torch.bool).reshape(1, 3)
    return replace(graph, pbc=flags.to(graph.pbc.device))
