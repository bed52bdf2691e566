"""matscale: graph neural network interatomic potentials trained at scale.

Units everywhere: energy eV, forces eV/Å, stress eV/Å³, lengths Å.
"""

__version__ = "0.1.0"
