"""Check the MACE peer (``mace_model.py``) on a few small structures; seconds on a CPU.

Run in MACE's own environment (made by ``benchmarks/peers/setup_mace``)::

    .venv-mace/bin/python benchmarks/peers/check_mace.py

Checks, on a randomly initialised model in float64 (where each agreement is far below the
tolerances): (a) forces = −dE/dx by central finite differences; (b) a molecule's energy is
invariant under a random rotation, and its forces rotate with it; (c) a structure's energy and
forces are the same alone and inside a batch; (d) the default settings give 80k–120k
parameters for 4 elements; (e) energies and forces equal those of MACE fed by its own data
pipeline (matscipy neighbour list, AtomicData), which checks the edge convention. Also: an
unknown element raises a ValueError naming it; in float32, a force loss (create_graph) reaches
every parameter, and matscale's own train_step, EMA and evaluate drive the model. Exits
non-zero on the first failed assert.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mace_model beside this file

from mace_model import MaceGraphModel, MaceSettings, build_mace, parameter_count

from matscale.config import TrainConfig
from matscale.data.batch import AtomGraph, collate, graph_sample
from matscale.data.readers import atoms_to_structure
from matscale.train.evaluate import evaluate
from matscale.train.step import ema_update, make_optimizer, train_step

R_MAX = 5.0  # Å
METALS = [28, 29, 46, 79]  # Ni Cu Pd Au
# E0 per element (eV): rough isolated-atom magnitudes, so that the float64 total is realistic
E0 = {1: -13.6, 6: -1029.0, 28: -41000.0, 29: -44700.0, 46: -136000.0, 79: -535000.0}


def alloy(rng: np.random.Generator) -> Atoms:
    """An 8-atom fcc cell (2x1x1 cubic, a = 3.8 Å) of randomly drawn Ni/Cu/Pd/Au, rattled."""
    atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
    atoms.numbers = rng.choice(METALS, size=len(atoms))
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def methane(rng: np.random.Generator) -> Atoms:
    """CH4 without a cell or pbc, slightly distorted so that no force vanishes by symmetry."""
    atoms = molecule("CH4")
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def graph_of(*structures: Atoms) -> AtomGraph:
    """The AtomGraph of ``structures`` at cutoff R_MAX, geometry in float64 (the float64
    checks need the exact one). Its positions are those the graph was built on: wrapped into
    the cell (``data.graph.model_positions``), the same structure, but not the input's
    numbers: the input's unwrapped positions with the wrapped graph's shifts would be
    another structure."""
    return collate(
        [
            graph_sample(atoms_to_structure(a, source="check"), R_MAX, dtype=np.float64)
            for a in structures
        ]
    )


def energy_net(model: MaceGraphModel, graph: AtomGraph) -> torch.Tensor:
    """[B] eV: the position-dependent part of the energy (the total less Σ E0).

    The finite differences use it rather than the total: E0 is constant in x, and a total
    of ~10⁶ eV (8 Au atoms) keeps only ~1e-9 eV of the difference, ~1e-5 eV/Å after / 2h.
    """
    return model(graph, training=False)["energy_net"].detach()


def check_forces(
    model: MaceGraphModel, graph: AtomGraph, rng: np.random.Generator, h: float = 1e-5
) -> float:
    """(a) −dE/dx along random directions v of all 3N coordinates (central differences, step
    h Å) against F·v; the largest difference relative to |F|·|v| (the bound on |F·v|).

    Random directions test every component at once with a few evaluations (the first
    calls of a TorchScripted MACE are slow, so a per-coordinate sweep costs a minute).
    """
    forces = model(graph, training=False)["forces"].detach()
    assert forces.abs().max() > 1e-3, f"forces too small to test ({forces.abs().max():.2e} eV/Å)"
    error = 0.0
    for _ in range(6):
        v = torch.from_numpy(rng.normal(size=tuple(graph.positions.shape)))
        # the edge list stays fixed: fine while no pair crosses r_max within ±h
        plus = energy_net(model, replace(graph, positions=graph.positions + h * v)).sum()
        minus = energy_net(model, replace(graph, positions=graph.positions - h * v)).sum()
        fd = -(plus - minus) / (2 * h)
        bound = torch.linalg.norm(forces) * torch.linalg.norm(v)
        error = max(error, float((fd - (forces * v).sum()).abs() / bound))
    assert error < 1e-6, f"forces differ from −dE/dx by {error:.2e} (relative)"
    return error


def random_rotation(rng: np.random.Generator) -> torch.Tensor:
    """[3, 3] a uniformly random proper rotation (QR of a Gaussian matrix, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.from_numpy(q)


def check_rotation(
    model: MaceGraphModel, graph: AtomGraph, rng: np.random.Generator
) -> tuple[float, float]:
    """(b) Relative change of the energy and of the (back-rotated) forces of a molecule."""
    rot = random_rotation(rng)
    centre = graph.positions.mean(dim=0)
    # rows are vectors: x' = (x − c) Rᵀ + c; the edges are the same, the lengths unchanged
    turned = replace(graph, positions=(graph.positions - centre) @ rot.T + centre)
    before, after = model(graph, training=False), model(turned, training=False)
    # energy_net: CH4's E0 (~10³ eV) would dilute a change of the learned part
    e0, e1 = before["energy_net"].detach(), after["energy_net"].detach()
    de = float(((e1 - e0) / e0).abs().max())
    f0, f1 = before["forces"].detach(), after["forces"].detach()
    df = float((f1 @ rot - f0).abs().max() / f0.abs().max())  # rotate F' back: F' R
    assert de < 1e-6, f"energy changed by {de:.2e} (relative) under a rotation"
    assert df < 1e-6, f"forces not equivariant: {df:.2e} (relative)"
    return de, df


def check_batch(model: MaceGraphModel, structures: list[Atoms]) -> float:
    """(c) Largest relative difference of energies/forces between alone and batched."""
    together = model(graph_of(*structures), training=False)
    worst = 0.0
    start = 0
    for b, atoms in enumerate(structures):
        alone = model(graph_of(atoms), training=False)
        n = len(atoms)
        # energy_net: the total's E0 of ~10⁶ eV would hide any difference
        e_batch = together["energy_net"][b].detach()
        e_alone = alone["energy_net"][0].detach()
        de = float((e_batch - e_alone).abs() / e_alone.abs())
        f_batch = together["forces"][start : start + n].detach()
        df = float((f_batch - alone["forces"].detach()).abs().max() / alone["forces"].abs().max())
        worst = max(worst, de, df)
        start += n
    assert worst < 1e-9, f"batched and single results differ by {worst:.2e} (relative)"
    return worst


def check_against_mace_pipeline(model: MaceGraphModel, structures: list[Atoms]) -> float:
    """(e) The wrapper's graph conversion against MACE's own (matscipy neighbour list,
    AtomicData, its batching): largest relative difference of energy_net and forces.

    Finite differences cannot catch a wrong edge convention (a wrong graph still has a
    conservative energy); this does.
    """
    from mace import data as mace_data
    from mace.tools import AtomicNumberTable, torch_geometric

    z_table = AtomicNumberTable([int(z) for z in model.zs.tolist()])
    # AtomicData takes torch's default dtype: float64, as the model, or rounding the
    # positions to float32 would differ by ~1e-7
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        items = [
            mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a), z_table=z_table, cutoff=R_MAX
            )
            for a in structures
        ]
    finally:
        torch.set_default_dtype(default)
    loader = torch_geometric.dataloader.DataLoader(items, batch_size=len(items), shuffle=False)
    batch = next(iter(loader)).to_dict()
    theirs = model.mace(batch, training=False, compute_force=True)
    ours = model(graph_of(*structures), training=False)
    e_ours, e_theirs = ours["energy_net"].detach(), theirs["interaction_energy"].detach()
    de = float(((e_ours - e_theirs) / e_theirs).abs().max())
    f_ours, f_theirs = ours["forces"].detach(), theirs["forces"].detach()
    df = float((f_ours - f_theirs).abs().max() / f_theirs.abs().max())
    worst = max(de, df)
    assert worst < 1e-9, f"the wrapper and MACE's own pipeline differ by {worst:.2e} (relative)"
    return worst


def check_unknown_element(model: MaceGraphModel, atoms: Atoms) -> str:
    """An element outside the table must raise a ValueError that names it."""
    try:
        model(graph_of(atoms), training=False)
    except ValueError as exc:
        message = str(exc)
        assert "H, C" in message, message
        return message
    raise AssertionError("an unknown element was accepted")


def metals_and_hc(settings: MaceSettings) -> MaceGraphModel:
    """The checks' model: the four metals plus H and C, unit scale."""
    return build_mace(
        settings,
        atomic_numbers=[1, 6, *METALS],
        atomic_energies_eV=E0,
        avg_num_neighbors=20.0,
        r_max=R_MAX,
        scale=1.0,
    )


def check_training_step(settings: MaceSettings, structures: list[Atoms]) -> dict[str, float]:
    """float32, as the benchmark trains: a loss on forces (training=True, create_graph)
    backpropagates to every parameter; then one step of matscale's own ``train_step`` with a
    deep-copied EMA and ``evaluate`` (which drive the model through ``predict`` and
    ``model.config``). Returns evaluate's metrics."""
    model = metals_and_hc(settings)
    graph = graph_of(*structures)
    graph = replace(graph, positions=graph.positions.float(), cell=graph.cell.float())
    out = model(graph, training=True)
    assert out["forces"].dtype == torch.float32 and out["energy"].dtype == torch.float64
    assert not graph.positions.requires_grad, "the caller's positions were changed"
    loss = out["forces"].pow(2).mean() + out["energy_net"].pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing[:5]}"
    model.zero_grad(set_to_none=True)

    # labels for matscale's loss: arbitrary values, every structure labelled
    gen = torch.Generator().manual_seed(1)
    labelled = replace(
        graph,
        energy=out["energy"].detach() + torch.randn(graph.num_graphs, generator=gen).double(),
        forces=torch.randn(graph.forces.shape, generator=gen),
        has_energy=torch.ones_like(graph.has_energy),
        has_forces=torch.ones_like(graph.has_forces),
    )
    t = TrainConfig(loss="mse", energy_weight=1.0, force_weight=100.0)
    ema = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, t)
    model.train()
    result = train_step(model, [labelled], optimizer, t, lr=1e-3, device=torch.device("cpu"))
    assert np.isfinite(result["loss"]), result
    unchanged = [
        n
        for (n, p), b in zip(model.named_parameters(), before, strict=True)
        if torch.equal(p.detach(), b)
    ]
    assert not unchanged, f"train_step left {unchanged[:5]} unchanged"
    ema_update(ema, model, 0.99)
    metrics = evaluate(ema, [labelled], ["check"], torch.device("cpu"))
    assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics
    return metrics


def main() -> None:
    """Run every check and print a summary."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    settings = MaceSettings()
    t0 = time.perf_counter()

    # (d) the default size, for the 4 metals
    metals_only = build_mace(
        settings,
        atomic_numbers=METALS,
        atomic_energies_eV=E0,
        avg_num_neighbors=20.0,
        r_max=R_MAX,
        scale=1.0,
    )
    n_params = parameter_count(metals_only)
    assert 80_000 <= n_params <= 120_000, f"{n_params} parameters for 4 elements"
    unknown = check_unknown_element(metals_only, methane(rng))

    # (a)-(c) in float64, on a model that knows the metals and H, C
    model = metals_and_hc(settings).double()
    assert next(model.parameters()).dtype == torch.float64
    cell, ch4 = alloy(rng), methane(rng)
    err_cell = check_forces(model, graph_of(cell), rng)
    err_ch4 = check_forces(model, graph_of(ch4), rng)
    de_rot, df_rot = check_rotation(model, graph_of(ch4), rng)
    err_batch = check_batch(model, [cell, ch4, alloy(rng)])
    err_pipeline = check_against_mace_pipeline(model, [cell, ch4, alloy(rng)])
    metrics = check_training_step(settings, [cell, ch4])

    e_cell = float(model(graph_of(cell), training=False)["energy"][0].detach())
    print(
        f"MACE peer checks passed ({time.perf_counter() - t0:.1f} s)\n"
        f"  settings: {settings}\n"
        f"  parameters: {n_params} for 4 elements (Ni Cu Pd Au), "
        f"{parameter_count(model)} for 6 (+ H C)\n"
        f"  (a) forces vs central differences along 6 random directions (relative): "
        f"alloy cell {err_cell:.1e}, CH4 {err_ch4:.1e}\n"
        f"  (b) CH4 under a random rotation (relative): energy {de_rot:.1e}, forces {df_rot:.1e}\n"
        f"  (c) alone vs batched (relative): {err_batch:.1e}\n"
        f"  (e) vs MACE's own neighbour list and batching (relative): {err_pipeline:.1e}\n"
        f"  unknown element: ValueError({unknown!r})\n"
        f"  float32 force loss (create_graph): every parameter has a gradient; matscale's\n"
        f"  train_step + EMA + evaluate run it (forces MAE {metrics['forces_mae_meV_per_A']:.0f}"
        f" meV/Å vs random labels)\n"
        f"  alloy cell energy (random weights): {e_cell:.4f} eV"
    )


if __name__ == "__main__":
    main()
