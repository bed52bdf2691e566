"""The model's input: :class:`AtomGraph`, a batch of structures as concatenated tensors.

No padding: atoms of all structures are concatenated, ``batch`` says which structure each atom
belongs to, and edge indices are offset into the concatenation. Geometry is float32 (Å); the
integer cell ``shifts`` are kept so that edge vectors can be recomputed from ``positions`` and
``cell`` inside autograd (forces as −∂E/∂positions, stress through a strain of the cell).

============ =========== ========= ===================================================
field        shape       dtype     meaning (units)
============ =========== ========= ===================================================
numbers      [N]         int64     atomic numbers
positions    [N, 3]      float32   Å
batch        [N]         int64     structure of each atom, 0..B-1
cell         [B, 3, 3]   float32   Å, lattice vectors as rows
pbc          [B, 3]      bool      periodic directions
edge_index   [2, E]      int64     (centre i, neighbour j), offset into the batch
shifts       [E, 3]      float32   integer cell shifts S: r_ij = x_j − x_i + S @ cell
n_atoms      [B]         int64     atoms per structure
source       [B]         int64     index into the store's source names (the readout head)
energy       [B]         float64   eV (0 where absent; see has_energy)
forces       [N, 3]      float32   eV/Å (0 where absent)
stress       [B, 6]      float32   eV/Å³ Voigt xx yy zz yz xz xy (0 where absent)
has_energy   [B]         bool      label present
has_forces   [B]         bool      label present (for every atom of that structure)
has_stress   [B]         bool      label present
index        [B]         int64     store index of each structure (−1 outside a store)
============ =========== ========= ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from matscale.data.graph import radius_graph
from matscale.data.structure import Structure


@dataclass
class AtomGraph:
    """A batch of structures; see the module docstring for every field's shape and unit."""

    numbers: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    n_atoms: torch.Tensor
    source: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    has_energy: torch.Tensor
    has_forces: torch.Tensor
    has_stress: torch.Tensor
    index: torch.Tensor

    @property
    def num_graphs(self) -> int:
        """Number of structures B."""
        return int(self.n_atoms.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AtomGraph:
        """The same batch on ``device``."""
        return AtomGraph(
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in fields(self)
            }
        )

    def pin_memory(self) -> AtomGraph:
        """Page-locked copy for fast host-to-GPU transfer (DataLoader calls this)."""
        return AtomGraph(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def edge_vectors(self) -> torch.Tensor:
        """[E, 3] Å: r_ij = x_j − x_i + S @ cell, differentiable in positions and cell."""
        i, j = self.edge_index
        cell_of_edge = self.cell[self.batch[i]]  # [E, 3, 3]
        # elementwise, not a matmul: autocast leaves it in float32 when the network runs bf16
        offsets = (self.shifts.unsqueeze(-1) * cell_of_edge).sum(dim=1)  # [E, 3] Å
        return self.positions[j] - self.positions[i] + offsets


def graph_sample(
    s: Structure,
    cutoff: float,
    *,
    max_neighbours: int | None = None,
    source: int = 0,
    index: int = -1,
) -> dict[str, np.ndarray]:
    """One structure as numpy arrays with its radius graph (built here, off the main process)."""
    edge_index, shifts = radius_graph(s.positions, s.cell, s.pbc, cutoff, max_neighbours)
    n = s.n_atoms
    return {
        "numbers": np.asarray(s.numbers, dtype=np.int64),
        "positions": np.asarray(s.positions, dtype=np.float32),
        "cell": np.asarray(s.cell, dtype=np.float32)[None],
        "pbc": np.asarray(s.pbc, dtype=bool)[None],
        "edge_index": edge_index,
        "shifts": shifts.astype(np.float32),
        "n_atoms": np.array([n], dtype=np.int64),
        "source": np.array([source], dtype=np.int64),
        "energy": np.array([0.0 if s.energy is None else s.energy], dtype=np.float64),
        "forces": (np.zeros((n, 3)) if s.forces is None else s.forces).astype(np.float32),
        "stress": (np.zeros((1, 6)) if s.stress is None else s.stress[None]).astype(np.float32),
        "has_energy": np.array([s.energy is not None]),
        "has_forces": np.array([s.forces is not None]),
        "has_stress": np.array([s.stress is not None]),
        "index": np.array([index], dtype=np.int64),
    }


def collate(samples: list[dict[str, np.ndarray]]) -> AtomGraph:
    """Concatenate samples from :func:`graph_sample` into one :class:`AtomGraph`."""
    n_atoms = np.array([len(s["numbers"]) for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    cat: dict[str, Any] = {
        key: torch.from_numpy(np.concatenate([s[key] for s in samples]))
        for key in samples[0]
        if key not in ("edge_index", "n_atoms")
    }
    cat["edge_index"] = torch.from_numpy(
        np.concatenate([s["edge_index"] + o for s, o in zip(samples, offsets, strict=True)], axis=1)
    )
    cat["n_atoms"] = torch.from_numpy(n_atoms)
    cat["batch"] = torch.from_numpy(np.repeat(np.arange(len(samples)), n_atoms))
    return AtomGraph(**cat)


class GraphDataset(torch.utils.data.Dataset):
    """Store structures as graph samples, for a DataLoader whose workers build the graphs.

    Parameters
    ----------
    store: a :class:`matscale.data.store.Store` (or anything indexable giving Structures
        with ``sources`` names).
    cutoff: graph radius (Å).
    max_neighbours: nearest neighbours kept per atom (None: all).
    heads: the model's head names; each structure's ``source`` field becomes the index of its
        source's head, matched by name (default: the store's own source order).
    """

    def __init__(
        self,
        store: Any,
        cutoff: float,
        max_neighbours: int | None = None,
        heads: tuple[str, ...] | list[str] | None = None,
    ) -> None:
        self.store = store
        self.cutoff = cutoff
        self.max_neighbours = max_neighbours
        names = list(heads) if heads is not None else list(store.sources)
        missing = sorted(set(store.sources) - set(names))
        if missing:
            from matscale.errors import DataError

            raise DataError(
                f"the model has no readout head for sources {missing}; its heads are {names}",
                field="source",
            )
        self._source_id = {name: i for i, name in enumerate(names)}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = self.store[int(i)]
        return graph_sample(
            s,
            self.cutoff,
            max_neighbours=self.max_neighbours,
            source=self._source_id[s.source],
            index=int(i),
        )

    def __getitems__(self, indices: list[int]) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in indices]


def make_loader(
    dataset: GraphDataset,
    sampler: Any,
    *,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch: int = 4,
) -> torch.utils.data.DataLoader:
    """A DataLoader that reads and builds the graphs of ``sampler``'s batches in ``workers``
    processes and yields :class:`AtomGraph` batches in the sampler's order."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        # workers live for the whole run: each opens (and checksums) a shard once, not per epoch
        persistent_workers=workers > 0,
        prefetch_factor=prefetch if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers build graphs with numpy; leave the cores to the model
