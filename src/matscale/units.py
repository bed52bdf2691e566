"""Unit conversions into matscale's units (eV, Å, eV/Å, eV/Å³).

Values are CODATA 2014 as used by ASE (``ase.units``), so that files converted here
agree with files converted by ASE.
"""

from ase import units as _ase

#: 1 Hartree in eV.
HARTREE_EV: float = float(_ase.Hartree)
#: 1 kcal/mol in eV.
KCAL_PER_MOL_EV: float = float(_ase.kcal / _ase.mol)
#: 1 Bohr in Å.
BOHR_ANGSTROM: float = float(_ase.Bohr)
#: 1 GPa in eV/Å³.
GPA_EV_PER_A3: float = float(_ase.GPa)
#: 1 kbar (VASP's stress unit) in eV/Å³.
KBAR_EV_PER_A3: float = 0.1 * GPA_EV_PER_A3

#: Energy units a reader accepts, as factors to eV.
ENERGY_UNITS: dict[str, float] = {"eV": 1.0, "Hartree": HARTREE_EV, "kcal/mol": KCAL_PER_MOL_EV}
#: Length units a reader accepts, as factors to Å.
LENGTH_UNITS: dict[str, float] = {"Angstrom": 1.0, "Bohr": BOHR_ANGSTROM}
