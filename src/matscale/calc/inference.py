"""Batched prediction: many structures of mixed sizes through a :class:`Potential` at once.

Structures are turned into graphs by the potential's own transform, packed in input order
into batches under an atom (and optionally edge) budget, and the results come back per
structure, in input order. The ASE calculator, ``matscale eval`` and the benchmarks all go
through :func:`predict_graph`, the one place a batch meets the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from ase import Atoms

from matscale.allocator import fit_heap_to
from matscale.calc.model_file import Potential
from matscale.data.atomgraph import AtomGraph
from matscale.data.batch import collate
from matscale.data.readers import occupancy_problem
from matscale.data.structure import Structure
from matscale.errors import DataError
from matscale.models.physics import predict as physics_predict

#: Atoms per batch by default: on 2 CPU cores batches of ~1,000 atoms were fastest
#: (``benchmarks/batched_predict.py``: 2.6x one structure per call; 2.1x at 4,096); on a GPU
#: larger budgets pay.
MAX_ATOMS = 1024
#: One structure's results: ``energy`` eV (float), ``energies`` [n] eV per atom, ``forces``
#: [n, 3] eV/Å, ``stress`` [6] eV/Å³ (Voigt xx yy zz yz xz xy, ASE's sign; periodic cells).
Result = dict[str, Any]


def as_structure(item: Atoms | Structure, *, index: int = 0) -> Structure:
    """A :class:`Structure` of the geometry of ``item`` (labels are not read: an ``Atoms``
    may carry this very calculator)."""
    if isinstance(item, Structure):
        return item
    if not isinstance(item, Atoms):
        raise DataError(
            f"expected ase.Atoms or matscale Structure, got {type(item).__name__}", record=index
        )
    if why := occupancy_problem(item.info):
        raise DataError(why, record=index, field="occupancy")
    return Structure(
        numbers=np.asarray(item.numbers, dtype=np.int64),
        positions=np.asarray(item.positions, dtype=np.float64),
        cell=np.asarray(item.cell[:], dtype=np.float64),
        pbc=np.asarray(item.pbc, dtype=bool),
        source=str(item.info.get("source", "")),
        family=str(item.info.get("family", "")),
        key=str(item.info.get("key", "")),
    )


def labeller(potential: Potential, head: str) -> str:
    """What a record of this model's numbers says made them (its ``labelled_by``): the model
    file (a shipped model: its name, not where it was installed) and the head, so that
    predictions cannot pass for reference data once packed."""
    name = potential.info.get("shipped_as") or potential.info.get("path", "(a model in memory)")
    return f"matscale {name}, head {head}"


def head_for(potential: Potential, s: Structure, head: str | None) -> int:
    """Head index for ``s``: ``head`` if given; else the structure's own source when it
    names a head; else the model's default head (shipped models) or its only head (an error
    listing the heads if there are several)."""
    if head is None and s.source in potential.graph.heads:
        return potential.graph.heads.index(s.source)
    try:
        return potential.graph.head_index(head or potential.info.get("default_head"))
    except DataError as exc:
        if head is None and s.source:  # say why its own source did not choose
            raise DataError(
                f"its source {s.source!r} names no head of this model; {exc.reason}",
                field="head",
            ) from None
        raise


def predict_graph(
    potential: Potential,
    graph: AtomGraph,
    *,
    forces: bool = True,
    stress: bool = False,
    owned: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The network on one batch: ``energy`` [B] eV, ``node_energy`` [N] eV, and ``forces``
    [N, 3] eV/Å and ``stress`` [B, 6] eV/Å³ when asked (stress: conservative models only).
    The batch is cast to the potential's dtype and device; outputs are detached."""
    dtype = potential.dtype
    floats = {
        k: getattr(graph, k).to(dtype) for k in ("positions", "cell", "shifts", "forces", "stress")
    }
    graph = replace(graph, **floats).to(potential.device)
    if potential.device.type == "cpu":  # the largest tensors: [E, H] of the edges
        width = potential.model.config.width
        fit_heap_to(graph.edge_index.shape[1] * width * dtype.itemsize)
    # the written-out forces cover whole structures; a domain's owned atoms take autograd's
    explicit = potential.explicit_forces and owned is None
    out = physics_predict(
        potential.model, graph, forces=forces, stress=stress, owned=owned, explicit=explicit
    )
    return {k: v.detach() for k, v in out.items()}


def predict(
    potential: Potential,
    structures: Iterable[Atoms | Structure],
    *,
    head: str | None = None,
    forces: bool = True,
    stress: bool | None = None,
    max_atoms: int = MAX_ATOMS,
    max_edges: int | None = None,
    progress: bool = False,
) -> list[Result]:
    """Energies, per-atom energies, forces and stress of many structures, in input order.

    Parameters
    ----------
    potential: from :func:`matscale.calc.load_potential`.
    structures: ``ase.Atoms`` or :class:`Structure`, of any sizes, periodic or not.
    head: the level of theory (a head name); None: each structure's ``source`` when it names
        a head, else the model's only head.
    forces: compute forces (eV/Å).
    stress: compute stress (eV/Å³) of fully periodic structures; None: when the model is
        conservative.
    max_atoms, max_edges: budget of one batch (a larger structure runs alone).
    progress: show a progress bar (structures).

    Returns
    -------
    One dict per structure: ``energy`` (eV), ``energies`` [n] (eV), ``forces`` [n, 3] (eV/Å),
    ``stress`` [6] (eV/Å³, Voigt, ASE's sign; only for cells periodic in 3D).
    """
    for name, budget in (("max_atoms", max_atoms), ("max_edges", max_edges)):
        if budget is not None and budget < 1:
            raise DataError(f"a batch budget must be >= 1, got {budget}", field=name)
    want_stress = potential.conservative if stress is None else stress
    if want_stress:
        potential.require_stress()
    if isinstance(structures, Atoms | Structure):
        raise DataError(
            "predict takes a list of structures, got one; pass [atoms] (or use "
            "MatscaleCalculator for one structure at a time)"
        )
    items = structures if isinstance(structures, Sequence) else list(structures)
    bar = _bar(len(items), progress)
    results: list[Result] = []
    for batch in batches(potential, items, head=head, max_atoms=max_atoms, max_edges=max_edges):
        out = predict_graph(potential, batch, forces=forces, stress=want_stress)
        results += _split(out, batch, forces=forces)
        bar.update(batch.num_graphs)
    bar.close()
    return results


def batches(
    potential: Potential,
    items: Iterable[Atoms | Structure],
    *,
    head: str | None = None,
    max_atoms: int = MAX_ATOMS,
    max_edges: int | None = None,
) -> Iterator[AtomGraph]:
    """AtomGraph batches of ``items`` in input order, each under the atom and edge budget
    (a structure over budget forms a batch of its own); graphs are built one at a time, so
    memory holds one batch, whatever the number of structures."""
    pending: list[dict[str, np.ndarray]] = []
    atoms = edges = 0
    for k, item in enumerate(items):
        s = as_structure(item, index=k)
        try:
            head_index = head_for(potential, s, head)
        except DataError as exc:  # name the structure that had no head
            raise DataError(exc.reason, record=s.key or k, field="head") from None
        sample = potential.graph.sample(s, head_index, index=k)
        n, e = len(sample["numbers"]), sample["edge_index"].shape[1]
        over = atoms + n > max_atoms or (max_edges is not None and edges + e > max_edges)
        if pending and over:
            yield collate(pending)
            pending, atoms, edges = [], 0, 0
        pending.append(sample)
        atoms, edges = atoms + n, edges + e
    if pending:
        yield collate(pending)


def _split(out: dict[str, torch.Tensor], graph: AtomGraph, *, forces: bool) -> list[Result]:
    """Per-structure results of one batch's outputs (forces only when asked: stress makes
    them anyway)."""
    n_atoms = graph.n_atoms.tolist()
    starts = np.cumsum(n_atoms)[:-1]
    node_energy = np.split(out["node_energy"].cpu().double().numpy(), starts)
    per_atom_forces = (
        np.split(out["forces"].cpu().double().numpy(), starts)
        if forces and "forces" in out
        else None
    )
    energy = out["energy"].cpu().double().numpy()
    periodic = graph.pbc.all(dim=1).tolist()
    results = []
    for b in range(graph.num_graphs):
        r: Result = {"energy": float(energy[b]), "energies": node_energy[b]}
        if per_atom_forces is not None:
            r["forces"] = per_atom_forces[b]
        if "stress" in out and periodic[b]:
            r["stress"] = out["stress"][b].cpu().double().numpy()
        results.append(r)
    return results


def _bar(total: int, enabled: bool) -> Any:
    from matscale.progress import progress_bar

    return progress_bar(total=total, desc="predicting", unit=" structures", enabled=enabled)
