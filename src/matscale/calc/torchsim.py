"""A torch-sim model for matscale potentials: :class:`MatscaleTorchSimModel`.

`torch-sim <https://github.com/TorchSim/torch-sim>`_ runs molecular dynamics and relaxations
of many systems at once on one device. This module needs it (``pip install
"matscale[torchsim]"``); ``import matscale.calc`` does not import it.

    import torch_sim as ts
    from matscale.calc.torchsim import MatscaleTorchSimModel

    model = MatscaleTorchSimModel.from_file("data/runs/demo/model.pt", head="emt-metals")
    final = ts.integrate(system=[atoms1, atoms2], model=model, integrator=ts.nvt_langevin,
                         n_steps=1000, temperature=300.0, timestep=0.002)  # K, ps
    converged = ts.generate_force_convergence_fn(force_tol=1e-3, include_cell_forces=True)
    relaxed = ts.optimize(system=atoms_list, model=model, optimizer=ts.frechet_cell_fire,
                          convergence_fn=converged)  # the default stops early on cells

Every call builds one batch of all the state's systems through the model's saved transform
(:meth:`matscale.data.transform.GraphSettings.sample`: cutoff, neighbour limit, elements per
head) and runs it through :func:`matscale.calc.inference.predict_graph`, the path of the ASE
calculator and of ``matscale eval``: a system gives the same numbers here and in
:class:`~matscale.calc.MatscaleCalculator`.

Outputs (torch-sim's metal units, in the state's dtype and on its device):

========== ================ ======= ===================================================
key        shape            unit    meaning
========== ================ ======= ===================================================
energy     [n_systems]      eV      total potential energy of each system
forces     [n_atoms, 3]     eV/Å    −∂E/∂positions
stress     [n_systems, 3, 3] eV/Å³  (1/V) ∂E/∂ε, symmetric, ASE's sign (pressure =
                                    −trace/3), the sign torch-sim's integrators and cell
                                    optimizers take; zeros for a system not periodic in all
                                    three directions; conservative models only
========== ================ ======= ===================================================

Conventions: torch-sim stores a state's cell as *column* vectors (``state.cell[b]`` is the
transpose of ASE's ``atoms.cell``); matscale's cell has the lattice vectors as rows, so the
graph is built from ``state.row_vector_cell``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'matscale.calc.torchsim needs torch-sim: pip install "matscale[torchsim]"'
    ) from exc

from matscale.calc.inference import predict_graph
from matscale.calc.model_file import Potential, load_potential
from matscale.data.batch import collate
from matscale.data.structure import Structure
from matscale.errors import DataError

__all__ = ["MatscaleTorchSimModel"]


class MatscaleTorchSimModel(ModelInterface):
    """torch-sim model of a matscale :class:`Potential`, for batched MD and relaxation.

    Parameters
    ----------
    potential: the model and its transform (:func:`matscale.calc.load_potential`); the
        wrapper runs on the potential's device and in its dtype (``model.device``,
        ``model.dtype``, which ``ts.integrate`` and ``ts.optimize`` give their states).
    head: level of theory by head name; None: the model's only head (an error listing the
        heads if it has several). One head for every system of a state.
    compute_stress: return ``stress``; None: when the model is conservative (a model with a
        direct force head has no stress: asking for it raises :class:`DataError`).
    compute_forces: return ``forces`` (a conservative model computes them by autograd).
    """

    def __init__(
        self,
        potential: Potential,
        head: str | None = None,
        *,
        compute_stress: bool | None = None,
        compute_forces: bool = True,
    ) -> None:
        super().__init__()
        want_stress = potential.conservative if compute_stress is None else compute_stress
        if want_stress:
            potential.require_stress()
        self.potential = potential
        self.model = potential.model  # a submodule: parameters() and state_dict() see it
        self.head = potential.graph.heads[potential.graph.head_index(head)]
        self._head_index = potential.graph.heads.index(self.head)
        self._device = potential.device
        self._dtype = potential.dtype
        self._compute_stress = bool(want_stress)
        self._compute_forces = bool(compute_forces)
        # a neighbour limit bounds the edges per atom; otherwise they grow with the density
        self._memory_scales_with = (
            "n_atoms" if potential.graph.max_neighbours is not None else "n_atoms_x_density"
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        head: str | None = None,
        device: str | torch.device = "cpu",
        compile: bool = False,
        **kwargs: Any,
    ) -> MatscaleTorchSimModel:
        """The torch-sim model of a model file (``model.pt``) on ``device`` (``compile``: see
        :func:`matscale.calc.load_potential`); ``kwargs`` go to the constructor
        (``compute_stress``, ``compute_forces``)."""
        return cls(load_potential(path, device=device, compile=compile), head=head, **kwargs)

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Energies, forces and stress of every system of ``state``.

        Parameters
        ----------
        state: a ``torch_sim.SimState`` (or a dict of its fields: ``positions`` [n_atoms, 3]
            Å, ``cell`` [n_systems, 3, 3] Å as column vectors, ``pbc``, ``atomic_numbers``
            [n_atoms], ``system_idx`` [n_atoms]).
        kwargs: ignored (torch-sim's interface allows model-specific options).

        Returns
        -------
        ``energy`` [n_systems] eV, ``forces`` [n_atoms, 3] eV/Å (when ``compute_forces``),
        ``stress`` [n_systems, 3, 3] eV/Å³ (when ``compute_stress``), in the state's dtype and
        on its device. Raises :class:`DataError` naming the system (``record``) for an element
        the head never saw, non-finite positions or a degenerate periodic cell.
        """
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        graph = collate(self._samples(state))
        stress = self.compute_stress
        out = predict_graph(self.potential, graph, forces=self.compute_forces, stress=stress)
        like = {"dtype": state.positions.dtype, "device": state.positions.device}
        results = {"energy": out["energy"].to(**like)}
        if self.compute_forces or stress:
            results["forces"] = out["forces"].to(**like)
        if stress:
            results["stress"] = voigt_to_matrix(out["stress"]).to(**like)
        return results

    def _samples(self, state: Any) -> list[dict[str, np.ndarray]]:
        """The graph sample of each system of ``state``, in system order."""
        positions = state.positions.detach().cpu().double().numpy()
        numbers = state.atomic_numbers.detach().cpu().numpy().astype(np.int64)
        system_idx = state.system_idx.detach().cpu().numpy()
        cells = state.row_vector_cell.detach().cpu().double().numpy()  # lattice vectors as rows
        n_systems = cells.shape[0]
        if len(system_idx) and np.any(np.diff(system_idx) < 0):
            raise DataError(
                "atoms must be grouped by system (system_idx sorted)", field="system_idx"
            )
        counts = np.bincount(system_idx, minlength=n_systems)
        if len(counts) != n_systems or np.any(counts == 0):
            raise DataError(
                f"system_idx names {len(counts)} systems with atoms per system {counts.tolist()}, "
                f"but the cell has {n_systems}",
                field="system_idx",
            )
        pbc = _pbc(state.pbc, n_systems)
        ends = np.cumsum(counts)
        samples = []
        for b in range(n_systems):
            atoms = slice(int(ends[b] - counts[b]), int(ends[b]))
            structure = Structure(
                numbers=numbers[atoms], positions=positions[atoms], cell=cells[b], pbc=pbc[b]
            )
            samples.append(self.potential.graph.sample(structure, self._head_index, index=b))
        return samples


def voigt_to_matrix(voigt: torch.Tensor) -> torch.Tensor:
    """[..., 6] Voigt (xx yy zz yz xz xy) → the symmetric [..., 3, 3] matrix."""
    xx, yy, zz, yz, xz, xy = voigt.unbind(-1)
    rows = [torch.stack(r, dim=-1) for r in ((xx, xy, xz), (xy, yy, yz), (xz, yz, zz))]
    return torch.stack(rows, dim=-2)


def _pbc(pbc: Any, n_systems: int) -> np.ndarray:
    """[n_systems, 3] bool from torch-sim's ``pbc`` (one bool for the whole state in
    torch-sim 0.3; a [3] or [n_systems, 3] tensor is read too)."""
    if isinstance(pbc, torch.Tensor):
        pbc = pbc.detach().cpu().numpy()
    flags = np.asarray(pbc, dtype=bool)
    try:
        return np.broadcast_to(flags, (n_systems, 3))
    except ValueError:
        raise DataError(
            f"pbc has shape {flags.shape}; expected a bool, [3] or [{n_systems}, 3]", field="pbc"
        ) from None
