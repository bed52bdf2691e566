"""Use a trained model: the model file, an ASE calculator, batched prediction, evaluation,
molecular dynamics and relaxation (``matscale eval``, ``md``, ``relax``), and torch-sim.

    from matscale.calc import MatscaleCalculator, load_potential, predict

The names are imported on first use, so that the CLI starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matscale.calc.ase_calculator import MatscaleCalculator
    from matscale.calc.inference import predict
    from matscale.calc.model_file import Potential, load_potential

__all__ = ["MatscaleCalculator", "Potential", "load_potential", "predict"]
_HOMES = {
    "MatscaleCalculator": "matscale.calc.ase_calculator",
    "Potential": "matscale.calc.model_file",
    "load_potential": "matscale.calc.model_file",
    "predict": "matscale.calc.inference",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'matscale.calc' has no attribute {name!r}")
