"""Use a trained model: the model file, an ASE calculator, batched prediction, evaluation,
molecular dynamics and relaxation (``matscale eval``, ``md``, ``relax``), and torch-sim.

    from matscale.calc import MatscaleCalculator, load_potential, predict
"""

from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.calc.model_file import Potential, load_potential
from matscale.calc.predict import predict

__all__ = ["MatscaleCalculator", "Potential", "load_potential", "predict"]
