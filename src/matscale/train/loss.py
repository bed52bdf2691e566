"""Losses and error sums over energy per atom (eV/atom), forces (eV/Å) and stress (eV/Å³).

Each target is masked by its ``has_*`` flag, so structures without a label contribute nothing
to that term. Reductions run in float32 whatever precision the network used.
"""

from __future__ import annotations

import torch

from matscale.data.atomgraph import AtomGraph

TARGETS = ("energy", "forces", "stress")


def residuals(
    pred: dict[str, torch.Tensor], g: AtomGraph
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-target (residual, mask): energy per atom [B], forces [N, 3], stress [B, 6].

    The energy residual is computed in float64 (totals reach 1e5 eV) and cast to float32.
    """
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    e = ((pred["energy"] - g.energy) / g.n_atoms).float()
    out["energy"] = (e, g.has_energy)
    if "forces" in pred:
        out["forces"] = ((pred["forces"] - g.forces).float(), g.has_forces[g.batch])
    if "stress" in pred:
        out["stress"] = ((pred["stress"] - g.stress).float(), g.has_stress)
    return out


def error(r: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """Elementwise error of residuals ``r``: |r| (mae), r² (mse) or Huber with ``delta``."""
    if kind == "mae":
        return r.abs()
    if kind == "mse":
        return r * r
    if kind == "huber":
        return torch.nn.functional.huber_loss(r, torch.zeros_like(r), reduction="none", delta=delta)
    raise ValueError(f"unknown loss {kind!r}")


def loss(
    pred: dict[str, torch.Tensor],
    g: AtomGraph,
    *,
    weights: dict[str, float],
    kind: str = "mae",
    delta: float = 0.01,
    force_weighting: str = "uniform",
    force_kind: str | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the mean errors of each target over the labelled entries.

    ``force_kind`` is the error function of the forces when it differs from ``kind`` (an MSE
    on forces weighs the large errors of far-from-equilibrium atoms, an MAE on energies keeps
    their accuracy).

    ``force_weighting="magnitude"`` weighs each atom's force error by 1 + |F| / mean |F| of
    the batch's labels (a weighted mean, so the term keeps its scale): the large-force tail,
    a few per cent of atoms, counts more than its share, as under an MSE, without MSE's
    weight on every outlier of the energy.

    Returns the scalar loss (for backward) and its parts as floats (for logs).
    """
    total = torch.zeros((), dtype=torch.float32, device=g.positions.device)
    parts: dict[str, float] = {}
    for name, (r, mask) in residuals(pred, g).items():
        w = weights.get(name, 0.0)
        if w == 0.0:
            continue
        err = error(r[mask], (force_kind or kind) if name == "forces" else kind, delta)
        if name == "forces" and force_weighting == "magnitude" and err.numel():
            size = torch.linalg.vector_norm(g.forces[mask].float(), dim=-1)  # [M] eV/Å
            atom_w = 1.0 + size / size.mean().clamp_min(1e-6)
            term = (err * atom_w.unsqueeze(-1)).sum() / (atom_w.sum() * err.shape[-1])
        else:
            term = err.mean() if err.numel() else err.sum()  # sum of nothing is 0, not NaN
        total = total + w * term
        parts[name] = float(term.detach())
    return total, parts


def error_sums(
    pred: dict[str, torch.Tensor], g: AtomGraph, n_sources: int
) -> dict[str, torch.Tensor]:
    """Sums of absolute errors and counts per source, for exact MAEs over many batches.

    Returns tensors [n_sources, 2] (sum of |error|, count) keyed by target.
    """
    out = {}
    for name, (r, mask) in residuals(pred, g).items():
        source = g.source if name != "forces" else g.source[g.batch]
        abs_err = r.detach().abs().reshape(len(r), -1)
        count = mask.float().unsqueeze(-1).expand_as(abs_err)
        sums = torch.zeros(n_sources, 2, dtype=torch.float64, device=r.device)
        sums[:, 0].index_add_(0, source, (abs_err * count).sum(1).double())
        sums[:, 1].index_add_(0, source, count.sum(1).double())
        out[name] = sums
    return out
