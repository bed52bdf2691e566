"""Forces are −dE/dx and stress (1/V) dE/dε, by central finite differences (float64)."""

import numpy as np
import pytest

from matscale.models.physics import predict
from tests.physics.conftest import MODELS
from tests.physics.structures import compressed, graph, molecular, periodic


def _energy(model, s) -> float:
    return float(predict(model, graph(s), forces=False)["energy"].detach().sum())


@pytest.mark.parametrize("make", [periodic, molecular, compressed])
def test_forces_are_minus_gradient(conservative_model, make) -> None:
    s = make()
    forces = predict(conservative_model, graph(s))["forces"].numpy()
    h = 1e-5
    for atom in range(0, s.n_atoms, 3):
        for k in range(3):
            plus, minus = type(s)(**s.__dict__), type(s)(**s.__dict__)
            plus.positions = s.positions.copy()
            minus.positions = s.positions.copy()
            plus.positions[atom, k] += h
            minus.positions[atom, k] -= h
            fd = -(_energy(conservative_model, plus) - _energy(conservative_model, minus)) / (2 * h)
            assert forces[atom, k] == pytest.approx(fd, abs=1e-6, rel=1e-5)


@pytest.mark.parametrize("make", [periodic, compressed])
def test_stress_is_strain_derivative(conservative_model, make) -> None:
    s = make(2)
    stress = predict(conservative_model, graph(s), stress=True)["stress"][0].numpy()
    volume = abs(np.linalg.det(s.cell))
    h = 1e-5
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for v, (a, b) in enumerate(voigt):
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] += sign * h / (1 if a == b else 2)
            eps[b, a] += sign * h / (1 if a == b else 2) if a != b else 0
            t = type(s)(**s.__dict__)
            t.positions = s.positions @ (np.eye(3) + eps)
            t.cell = s.cell @ (np.eye(3) + eps)
            energies.append(_energy(conservative_model, t))
        fd = (energies[0] - energies[1]) / (2 * h) / volume
        assert stress[v] == pytest.approx(fd, abs=1e-8, rel=1e-5)


def test_direct_forces_refuse_stress() -> None:
    direct = MODELS["egnn-direct"]().double()
    with pytest.raises(ValueError, match="stress needs conservative"):
        predict(direct, graph(periodic()), stress=True)


def test_energy_is_smooth_across_the_cutoff(model) -> None:
    """Two atoms pulled apart through the cutoff: energy and forces reach their separated
    values continuously (no jump when the edge disappears)."""
    from matscale.data.structure import Structure

    cutoff = model.config.cutoff
    distances = np.array([cutoff - 2e-3, cutoff - 1e-3, cutoff + 1e-3])
    energies, forces = [], []
    for d in distances:
        s = Structure(
            numbers=np.array([29, 79]), positions=np.array([[0, 0, 0], [d, 0, 0.0]]), source="a"
        )
        out = predict(model, graph(s))
        energies.append(float(out["energy"].detach()))
        forces.append(float(out["forces"][1, 0].detach()))
    # beyond the cutoff the pair does not interact; approaching it, energy and force go to
    # their separated values as (1 - d/c)^3 and ^2, so a millimetre away they nearly agree
    assert abs(energies[1] - energies[2]) < 1e-9
    assert abs(forces[1]) < 1e-6 and abs(forces[0]) < 4e-6
    assert abs(forces[0]) > abs(forces[1])  # and it is smooth, not clamped
