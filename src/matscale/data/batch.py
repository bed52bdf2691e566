"""Batching: structures → graph samples (numpy) → :class:`AtomGraph` batches.

:class:`AtomGraph` itself lives in :mod:`matscale.data.atomgraph` (torch only, so that models
import it without ASE or vesin); it is re-exported here. How a structure becomes a graph is
:class:`matscale.data.transform.GraphSettings`, the one transform of training and inference.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matscale.data.atomgraph import AtomGraph
from matscale.data.graph import model_positions, radius_graph
from matscale.data.structure import Structure
from matscale.errors import DataError
from matscale.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from matscale.data.transform import GraphSettings

__all__ = ["AtomGraph", "GraphDataset", "collate", "graph_sample", "make_loader"]


def graph_sample(
    s: Structure,
    cutoff: float,
    *,
    max_neighbours: int | None = None,
    source: int = 0,
    index: int = -1,
    dtype: type[np.floating] = np.float32,
) -> dict[str, np.ndarray]:
    """One structure as numpy arrays with its radius graph (built here, off the main process);
    geometry (positions, cell, shifts) and force and stress labels in ``dtype``. Positions are
    wrapped into the cell along periodic directions and centred when any direction is open
    (:func:`~matscale.data.graph.model_positions`) before they are cast: the same structure,
    without float32's loss of digits far from the origin."""
    positions = model_positions(s.positions, s.cell, s.pbc)
    edge_index, shifts = radius_graph(positions, s.cell, s.pbc, cutoff, max_neighbours)
    n = s.n_atoms
    return {
        "numbers": np.asarray(s.numbers, dtype=np.int64),
        "positions": positions.astype(dtype),
        "cell": np.asarray(s.cell, dtype=dtype)[None],
        "pbc": np.asarray(s.pbc, dtype=bool)[None],
        "edge_index": edge_index,
        "shifts": shifts.astype(dtype),
        "n_atoms": np.array([n], dtype=np.int64),
        "source": np.array([source], dtype=np.int64),
        "energy": np.array([0.0 if s.energy is None else s.energy], dtype=np.float64),
        "forces": (np.zeros((n, 3)) if s.forces is None else s.forces).astype(dtype),
        "stress": (np.zeros((1, 6)) if s.stress is None else s.stress[None]).astype(dtype),
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
    settings: the model's :class:`~matscale.data.transform.GraphSettings`; each structure is
        read by the head named like its source.
    """

    def __init__(self, store: Any, settings: GraphSettings) -> None:
        self.store = store
        self.settings = settings
        missing = sorted(set(store.sources) - set(settings.heads))
        if missing:
            raise DataError(
                f"the model has no readout head for sources {missing}; "
                f"its heads are {list(settings.heads)}",
                field="source",
            )
        self._head = {name: settings.heads.index(name) for name in store.sources}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = self.store[int(i)]
        # checked when packed (and the shards by checksum when opened): checking again would
        # only cost the loader time
        return self.settings.sample(s, self._head[s.source], index=int(i), packed=True)

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
    # Ctrl-C reaches the whole process group and SLURM signals every process of a job step:
    # the training process answers them (finish the step, checkpoint, stop) and shuts its
    # workers down itself; a worker that died of the signal first would break that last step
    # (a worker whose parent is gone exits by itself, DataLoader's watchdog)
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
