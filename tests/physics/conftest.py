"""The physics suite runs on every architecture and option in MODELS; add a new one here."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from matscale.models.egnn import EGNN, EGNNConfig

MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "egnn": lambda: EGNN(EGNNConfig(width=16, depth=3, cutoff=4.0, heads=("a", "b"))),
    "egnn-vectors": lambda: EGNN(
        EGNNConfig(width=16, depth=3, cutoff=4.0, heads=("a", "b"), vector_channels=4)
    ),
    "egnn-direct": lambda: EGNN(
        EGNNConfig(width=16, depth=3, cutoff=4.0, heads=("a", "b"), force_head="direct")
    ),
    "egnn-plain-layernorm": lambda: EGNN(
        EGNNConfig(
            width=16,
            depth=2,
            cutoff=4.0,
            heads=("a", "b"),
            factored=False,
            norm="layer",
        )
    ),
    # the coordinate channel and residual updates (off by default)
    "egnn-coordinates-residual": lambda: EGNN(
        EGNNConfig(
            width=16, depth=3, cutoff=4.0, heads=("a", "b"), coord_update=True, residual=True
        )
    ),
    "egnn-direct-coordinates": lambda: EGNN(
        EGNNConfig(
            width=16, depth=3, cutoff=4.0, heads=("a", "b"), force_head="direct", coord_update=True
        )
    ),
}


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so that no symmetry of the initialisation hides a bug, and give
    the data-statistics buffers non-trivial values; float64 for finite differences."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.reference_energy.uniform_(-2.0, 0.0)
        model.energy_scale.uniform_(0.5, 1.5)
        model.force_scale.uniform_(0.5, 1.5)
    return model.double()


@pytest.fixture(params=sorted(MODELS))
def model(request) -> torch.nn.Module:
    return _randomise(MODELS[request.param]())


@pytest.fixture
def conservative_model() -> torch.nn.Module:
    return _randomise(MODELS["egnn"]())
