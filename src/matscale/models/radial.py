"""Smooth functions of the interatomic distance: a radial basis under a cutoff envelope.

Both go to zero with their first derivatives at the cutoff, so energies and forces stay
continuous when an atom crosses it (a ReLU MLP of the raw distance does not: DESIGN.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def polynomial_envelope(d: torch.Tensor, cutoff: float | torch.Tensor, p: int = 6) -> torch.Tensor:
    """u(d) = 1 − (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} − p(p+1)/2 x^{p+2}, x = d / cutoff,
    and 0 beyond the cutoff (DimeNet's envelope): u(0) = 1, u, u' and u'' vanish at x = 1.

    d: [E] Å; cutoff: a float or [E] Å (one per edge). Returns [E], dimensionless.
    """
    x = d / cutoff
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return torch.where(x < 1.0, u, torch.zeros_like(u))


def polynomial_envelope_derivative(
    d: torch.Tensor, cutoff: float | torch.Tensor, p: int = 6
) -> torch.Tensor:
    """du/dd of :func:`polynomial_envelope` (1/Å), for terms whose forces are written out
    rather than taken by autograd; d: [E] Å, cutoff a float or [E] Å."""
    x = d / cutoff
    du = -p * (p + 1) * (p + 2) / 2 * (x ** (p - 1) - 2 * x**p + x ** (p + 1)) / cutoff
    return torch.where(x < 1.0, du, torch.zeros_like(du))


class BesselBasis(nn.Module):
    """sqrt(2/c) sin(nπd/c) / d for n = 1..n_basis (DimeNet), d in Å; [E] → [E, n_basis].

    The frequencies are trainable (initialised at nπ/c), as in NequIP and MACE.
    """

    def __init__(self, n_basis: int, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.prefactor = math.sqrt(2.0 / cutoff)
        self.frequencies = nn.Parameter(torch.arange(1, n_basis + 1) * math.pi / cutoff)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        d = d.unsqueeze(-1)  # [E, 1]
        return self.prefactor * torch.sin(self.frequencies * d) / d
