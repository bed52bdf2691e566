"""The repulsive pair prior (models/repulsion.py): its derivative, where it acts and where not,
its size against an independent repulsion (EMT), and its effect on a model with any weights."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from matscale.models.egnn import EGNN, LEGACY_DEFAULTS, EGNNConfig, upgrade_config
from matscale.models.physics import predict
from matscale.models.repulsion import (
    pair_energy,
    pair_energy_and_derivative,
    switch_radius,
)
from tests.physics.conftest import _randomise
from tests.physics.structures import graph

PAIRS = [(29, 29), (1, 6), (79, 13), (8, 1)]


@pytest.mark.parametrize(("zi", "zj"), PAIRS)
def test_analytic_derivative_equals_autograd(zi: int, zj: int) -> None:
    z_i, z_j = torch.full((50,), zi), torch.full((50,), zj)
    r = float(switch_radius(z_i[:1], z_j[:1]))
    d = torch.linspace(0.2, 1.2 * r, 50, dtype=torch.float64).requires_grad_(True)
    psi, dpsi = pair_energy_and_derivative(d, z_i, z_j)
    (auto,) = torch.autograd.grad(pair_energy(d, z_i, z_j).sum(), d)
    torch.testing.assert_close(dpsi, auto, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(psi, pair_energy(d, z_i, z_j))


@pytest.mark.parametrize(("zi", "zj"), PAIRS)
def test_zero_beyond_the_switch_and_smooth_at_it(zi: int, zj: int) -> None:
    z = (torch.tensor([zi]), torch.tensor([zj]))
    r = float(switch_radius(*z))
    far = torch.tensor([r, r + 0.1, 4.0, 10.0], dtype=torch.float64)
    psi, dpsi = pair_energy_and_derivative(far, *(x.expand(4) for x in z))
    assert torch.all(psi == 0) and torch.all(dpsi == 0)
    near = torch.tensor([r * (1 - 1e-4)], dtype=torch.float64)
    psi, dpsi = pair_energy_and_derivative(near, *z)
    assert 0 < float(psi) < 1e-6 and abs(float(dpsi)) < 1e-3  # value and slope reach zero
    # repulsive and steeper the closer: energy falls and the force pushes apart everywhere
    d = torch.linspace(0.1, r - 1e-3, 200, dtype=torch.float64)
    psi, dpsi = pair_energy_and_derivative(d, *(x.expand(200) for x in z))
    assert torch.all(psi[1:] < psi[:-1]) and torch.all(dpsi < 0)


def test_size_against_emt_dimers() -> None:
    """An independent repulsion: EMT's Cu₂, Au₂ and Al₂ at 0.8, 1.0 and 1.2 Å (relative to
    2.5 Å) are within a factor of 3 of the prior."""
    from ase import Atoms
    from ase.calculators.emt import EMT

    for symbol, z in (("Cu", 29), ("Au", 79), ("Al", 13)):

        def emt(d: float, symbol: str = symbol) -> float:
            atoms = Atoms(symbol * 2, positions=[[0, 0, 0], [d, 0, 0]])
            atoms.calc = EMT()
            return atoms.get_potential_energy()

        for d in (0.8, 1.0, 1.2):
            prior = float(pair_energy(torch.tensor([d]), torch.tensor([z]), torch.tensor([z])))
            reference = emt(d) - emt(2.5)
            assert reference / 3 < prior < 3 * reference, (symbol, d, prior, reference)


def _dimer_energy(model: torch.nn.Module, d: float) -> float:
    from matscale.data.structure import Structure

    s = Structure(
        numbers=np.array([29, 29]), positions=np.array([[0, 0, 0], [d, 0, 0.0]]), source="a"
    )
    return float(predict(model, graph(s), forces=False)["energy"].detach())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atoms_pushed_together_go_up_whatever_the_weights(seed: int) -> None:
    torch.manual_seed(seed)
    model = _randomise(EGNN(EGNNConfig(width=16, depth=2, cutoff=4.0, heads=("a", "b"))))
    energies = [_dimer_energy(model, d) for d in (0.3, 0.6, 1.0, 2.2)]
    assert energies == sorted(energies, reverse=True)
    assert energies[0] - energies[-1] > 500.0  # eV: no network output comes near
    # and without the prior, nothing stops a network from the opposite
    off = _randomise(
        EGNN(EGNNConfig(width=16, depth=2, cutoff=4.0, heads=("a", "b"), pair_repulsion=False))
    )
    assert abs(_dimer_energy(off, 0.3) - _dimer_energy(off, 2.2)) < 100.0


def test_direct_head_adds_the_prior_forces_exactly() -> None:
    """Direct forces are the network's own; the prior's forces must be −∇E_rep exactly, so
    the difference of a model with and without it is checked by finite differences."""
    from tests.physics.structures import compressed

    cfg = dict(width=16, depth=2, cutoff=4.0, heads=("a", "b"), force_head="direct")
    on = _randomise(EGNN(EGNNConfig(**cfg)))
    off = copy.deepcopy(on)  # the same network, without the prior
    off.config = replace(on.config, pair_repulsion=False)
    s = compressed()
    g = graph(s)
    df = (predict(on, g)["forces"] - predict(off, g)["forces"]).detach().numpy()
    assert np.abs(df).max() > 1.0  # eV/Å: the prior acts on this structure

    def e_rep(positions: np.ndarray) -> float:
        t = type(s)(**{**s.__dict__, "positions": positions})
        return float((on(graph(t))["energy"] - off(graph(t))["energy"]).detach().sum())

    h = 1e-6
    for atom in range(s.n_atoms):
        for k in range(3):
            plus, minus = s.positions.copy(), s.positions.copy()
            plus[atom, k] += h
            minus[atom, k] -= h
            fd = -(e_rep(plus) - e_rep(minus)) / (2 * h)
            assert df[atom, k] == pytest.approx(fd, abs=1e-5, rel=1e-6)


def test_models_saved_before_the_prior_load_without_it() -> None:
    assert LEGACY_DEFAULTS == {"pair_repulsion": False}
    assert upgrade_config({"width": 8})["pair_repulsion"] is False
    assert upgrade_config({"width": 8, "pair_repulsion": True})["pair_repulsion"] is True
    assert EGNNConfig().pair_repulsion  # new models have it
