"""Forces and stress from an energy model, as small pure functions of autograd (float32).

Stress uses a symmetric strain ε applied to positions and cell, x' = x (I + ε), so that
σ = (1/V) ∂E/∂ε at ε = 0 (eV/Å³, ASE's sign). The same functions serve training
(``create_graph=True``: the loss differentiates the forces again) and inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from matscale.data.atomgraph import AtomGraph

EnergyModel = Callable[[AtomGraph], dict[str, torch.Tensor]]


def predict(
    model: EnergyModel,
    graph: AtomGraph,
    *,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    owned: torch.Tensor | None = None,
    explicit: bool = False,
) -> dict[str, torch.Tensor]:
    """Energy [B] eV, and forces [N, 3] eV/Å and stress [B, 6] eV/Å³ (Voigt xx yy zz yz xz xy)
    when asked, as −∂E/∂x and (1/V) ∂E/∂ε. A model that returns ``forces`` itself (a direct
    head) keeps them, and cannot give stress.

    ``owned`` [N] bool differentiates only those atoms' energies (domain decomposition: a
    ghost's own energy belongs to another process; see :mod:`matscale.calc.domain`).
    ``explicit``: the model writes its derivatives out (``EGNN.forward(...,
    explicit_forces=True)``); the results are differentiable in the parameters whatever
    ``create_graph`` says.
    """
    if explicit and (forces or stress) and not _has_direct_forces(model):
        if owned is not None:
            raise ValueError("explicit forces cover whole structures, not owned atoms")
        out = model(graph, explicit_forces=True, stress=stress)  # type: ignore[call-arg]
        return out if forces else {k: v for k, v in out.items() if k != "forces"}
    # autograd is how forces are made: on even under no_grad (evaluation, calculators)
    with torch.enable_grad():
        return _predict(
            model, graph, forces=forces, stress=stress, create_graph=create_graph, owned=owned
        )


def _predict(
    model: EnergyModel,
    graph: AtomGraph,
    *,
    forces: bool,
    stress: bool,
    create_graph: bool,
    owned: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    want_grad = (forces or stress) and not _has_direct_forces(model)
    if not want_grad:
        if stress:
            raise ValueError("stress needs conservative forces (force_head='conservative')")
        return model(graph)
    positions = graph.positions.detach().requires_grad_(True)
    inputs = [positions]
    cell = graph.cell
    if stress:
        strain = torch.zeros_like(graph.cell, requires_grad=True)  # [B, 3, 3]
        sym = 0.5 * (strain + strain.transpose(1, 2))
        positions_in = positions + torch.einsum("ni,nij->nj", positions, sym[graph.batch])
        cell = cell + torch.bmm(cell, sym)
        inputs.append(strain)
    else:
        positions_in = positions
    out = model(replace(graph, positions=positions_in, cell=cell))
    target = out["energy_net"].sum() if owned is None else out["node_energy"][owned].sum()
    grads = torch.autograd.grad(target, inputs, create_graph=create_graph, allow_unused=True)
    result = dict(out)
    result["forces"] = -_or_zeros(grads[0], positions)
    if stress:
        result["stress"] = stress_from_virial(_or_zeros(grads[1], graph.cell), graph)
    return result


def stress_from_virial(virial: torch.Tensor, graph: AtomGraph) -> torch.Tensor:
    """σ = (1/V) ∂E/∂ε [B, 6] eV/Å³ (Voigt xx yy zz yz xz xy) from the symmetric virial
    ∂E/∂ε [B, 3, 3] eV; zero for structures not periodic along all three axes."""
    volume = torch.linalg.det(graph.cell).abs()  # [B] Å³
    s = virial / volume.clamp_min(1e-12)[:, None, None]
    s = torch.where(graph.pbc.all(dim=1)[:, None, None], s, torch.zeros_like(s))
    return torch.stack(
        [s[:, 0, 0], s[:, 1, 1], s[:, 2, 2], s[:, 1, 2], s[:, 0, 2], s[:, 0, 1]], dim=1
    )


def _has_direct_forces(model: EnergyModel) -> bool:
    plain = getattr(model, "module", model)  # a DDP wrapper keeps the model in .module
    config = getattr(plain, "config", None)
    return getattr(config, "force_head", "conservative") == "direct"


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad
