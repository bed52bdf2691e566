"""A repulsive pair prior for contacts shorter than bonds: ZBL, switched off inside bonding range.

    E_rep = ½ Σ_i Σ_j≠i φ(d_ij) s(d_ij / r_ij)                                    eV
    φ(d) = k_e Z_i Z_j / d · Σ_k c_k exp(−b_k d / a),  a = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    r_ij = SWITCH_RATIO × (R_i + R_j)     (R: covalent radii)

φ is the universal screened nuclear repulsion of Ziegler, Biersack and Littmark (1985); s is
the cutoff envelope of ``radial.py``, so the prior and its first two derivatives vanish at
r_ij and it is exactly zero beyond: it never touches bonded or near-equilibrium geometry.

Why: training data hold few contacts shorter than bonds, and the network's energy stays
bounded as two atoms meet (the radial basis and the envelope are finite at d = 0), so without a
prior a model can place two atoms pushed together *below* the same atoms apart — a new user's
Cu₂ at 1.0 Å came out lower than at 2.0 Å — and MD can fuse atoms. With the prior the energy
rises without bound as d → 0. Measured against EMT dimers (Cu, Au, Al), φ·s with
SWITCH_RATIO 0.75 is within a factor of ~2 of EMT's repulsion between 1.0 and 1.5 Å (Cu₂:
115 against 69 eV at 1.0 Å, 6.7 against 9.5 eV at 1.5 Å) and adds 0.26 eV at 1.8 Å, where the
network has data to learn the rest. MACE and NequIP offer the same kind of term (ZBL with a
covalent-radius cutoff) for the same reason.
"""

from __future__ import annotations

import torch

from matscale.models.radial import polynomial_envelope, polynomial_envelope_derivative

#: Coulomb's constant e²/(4πε₀) in eV·Å.
COULOMB_EV_A = 14.399645
#: ZBL's universal screening function: Σ_k c_k exp(−b_k x), x = d / a.
ZBL_C = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_B = (3.19980, 0.94229, 0.40290, 0.20162)
#: ZBL screening length numerator (Å): a = ZBL_A / (Z_i^0.23 + Z_j^0.23).
ZBL_A = 0.46850
#: The prior switches off at this share of the sum of two atoms' covalent radii.
SWITCH_RATIO = 0.75
#: Exponent of the switching envelope (as the model's cutoff envelope).
SWITCH_P = 6
#: Covalent radii (Å) by atomic number, index 0 unused: Cordero et al., Dalton Trans. 2008,
#: 2832, as tabulated by ASE (sp³ carbon; 2.0 Å stands in beyond curium, where none exists).
COVALENT_RADII_A = (
    0.20, 0.31, 0.28, 1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58, 1.66, 1.41, 1.21, 1.11,
    1.07, 1.05, 1.02, 1.06, 2.03, 1.76, 1.70, 1.60, 1.53, 1.39, 1.39, 1.32, 1.26, 1.24, 1.32,
    1.22, 1.22, 1.20, 1.19, 1.20, 1.20, 1.16, 2.20, 1.95, 1.90, 1.75, 1.64, 1.54, 1.47, 1.46,
    1.42, 1.39, 1.45, 1.44, 1.42, 1.39, 1.39, 1.38, 1.39, 1.40, 2.44, 2.15, 2.07, 2.04, 2.03,
    2.01, 1.99, 1.98, 1.98, 1.96, 1.94, 1.92, 1.92, 1.89, 1.90, 1.87, 1.87, 1.75, 1.70, 1.62,
    1.51, 1.44, 1.41, 1.36, 1.36, 1.32, 1.45, 1.46, 1.48, 1.40, 1.50, 1.50, 2.60, 2.21, 2.15,
    2.06, 2.00, 1.96, 1.90, 1.87, 1.80, 1.69, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00,
    2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00, 2.00,
)  # fmt: skip


def switch_radius(zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
    """r_ij (Å) for atomic numbers zi, zj [E] (int): where the prior reaches zero."""
    radii = torch.tensor(COVALENT_RADII_A, dtype=torch.float32, device=zi.device)
    return SWITCH_RATIO * (radii[zi] + radii[zj])


def pair_prior(
    d: torch.Tensor,
    vectors: torch.Tensor,
    edge_index: torch.Tensor,
    numbers: torch.Tensor,
    *,
    forces: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prior's energy per atom [N] eV (half of each pair's on either end) and, with
    ``forces``, its forces [N, 3] eV/Å written out (F_i = Σ_j ψ'(d_ij) r̂_ij, for models whose
    forces are not −∂E/∂x); otherwise None, and forces follow from the energy by autograd.

    d: [E] Å, vectors: [E, 3] Å (r_ij), edge_index: [2, E] (full list: both directions),
    numbers: [N] atomic numbers. Only edges inside their switch radius are evaluated: in
    near-equilibrium data that is almost none, so the prior costs one comparison per edge.
    """
    i, j = edge_index
    zi, zj = numbers[i], numbers[j]
    close = torch.nonzero(d < switch_radius(zi, zj).to(d.dtype)).squeeze(-1)
    energy = d.new_zeros(numbers.shape[0])
    if not forces:
        psi = pair_energy(d[close], zi[close], zj[close])
        return energy.index_add(0, i[close], 0.5 * psi), None
    psi, dpsi = pair_energy_and_derivative(d[close], zi[close], zj[close])
    unit = vectors[close] / d[close].unsqueeze(-1)
    force = vectors.new_zeros(numbers.shape[0], 3).index_add(0, i[close], dpsi.unsqueeze(-1) * unit)
    return energy.index_add(0, i[close], 0.5 * psi), force


def pair_energy(d: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
    """ψ(d) = φ(d) s(d / r_ij) (eV) per directed edge; d: [E] Å (float32 or float64), zi, zj:
    [E] atomic numbers. Differentiable in d: conservative forces follow by autograd."""
    psi, _ = _pair(d, zi, zj, derivative=False)
    return psi


def pair_energy_and_derivative(
    d: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ψ(d) (eV) and dψ/dd (eV/Å), analytically, per edge: for models whose forces do not
    come from autograd (the direct force head)."""
    psi, dpsi = _pair(d, zi, zj, derivative=True)
    assert dpsi is not None
    return psi, dpsi


def _pair(
    d: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor, *, derivative: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    fi, fj = zi.to(d.dtype), zj.to(d.dtype)
    a = ZBL_A / (fi**0.23 + fj**0.23)  # [E] Å
    r = switch_radius(zi, zj).to(d.dtype)
    inside = d < r
    # beyond the switch every term is exactly zero; evaluate those edges at r instead, so that
    # no exp or 1/d of a far edge can put an inf or NaN into the gradient
    dd = torch.where(inside, d, r)
    screen, dscreen = torch.zeros_like(dd), torch.zeros_like(dd)
    for c, b in zip(ZBL_C, ZBL_B, strict=True):
        e = c * torch.exp(-b * dd / a)
        screen = screen + e
        dscreen = dscreen - (b / a) * e
    k = COULOMB_EV_A * fi * fj  # eV·Å
    phi = k * screen / dd
    s = polynomial_envelope(dd, r, SWITCH_P)
    psi = torch.where(inside, phi * s, torch.zeros_like(d))
    if not derivative:
        return psi, None
    dphi = k * (dscreen / dd - screen / dd**2)
    ds = polynomial_envelope_derivative(dd, r, SWITCH_P)
    return psi, torch.where(inside, dphi * s + phi * ds, torch.zeros_like(d))
