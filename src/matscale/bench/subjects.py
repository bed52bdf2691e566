"""What ``matscale bench`` scores: a matscale model, a teacher potential or GFN2-xTB, each as
an ASE calculator with the elements it covers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ase.data import atomic_numbers

from matscale.errors import DataError

#: Names of the reference calculators ``matscale bench`` runs beside a model.
TEACHER_NAMES = ("sevennet", "chgnet")
XTB_NAME = "gfn2-xtb"
#: Vacuum (Å) around a molecule for a calculator that needs a cell: beyond any teacher's
#: cutoff (5-6 Å), so the images do not interact.
VACUUM = 10.0


@dataclass
class Subject:
    """A calculator under test: its display name, the ASE calculator, and the atomic numbers
    it covers (None: every element the suites use)."""

    name: str
    calc: Any
    elements: frozenset[int] | None = None
    needs_cell: bool = False
    """Whether the calculator reads every structure as a crystal (CHGNet, through pymatgen):
    molecules then go into a box of vacuum."""

    def energy(self, atoms: Any) -> float:
        """The energy (eV) of ``atoms`` (not modified); a molecule goes into a box of
        :data:`VACUUM` Å of vacuum on every side for a calculator that needs a cell."""
        atoms = atoms.copy()
        if self.needs_cell and not atoms.pbc.any():
            atoms.center(vacuum=VACUUM)
        atoms.calc = self.calc
        return float(atoms.get_potential_energy())

    def covers(self, symbols: list[str]) -> bool:
        """Whether every element of ``symbols`` is one this calculator knows."""
        return self.elements is None or {atomic_numbers[s] for s in symbols} <= self.elements


def subject(spec: str, *, head: str | None = None) -> Subject:
    """The calculator named by ``spec``: a model file (``data/runs/x/model.pt``), a shipped
    model's name (``matscale.pretrained``), a teacher (``sevennet``, ``chgnet``) or
    ``gfn2-xtb``; ``head`` picks a matscale model's head."""
    key = spec.lower()
    if key in TEACHER_NAMES:
        from matscale.data.generate import teacher

        t = {"sevennet": teacher.SEVENNET, "chgnet": teacher.CHGNET}[key]
        if teacher.missing_package(t.source):
            raise DataError(
                f"{spec} needs the package {t.package}: pip install -c constraints.txt "
                "-e '.[teachers]'"
            )
        return Subject(
            t.labelled_by(),
            teacher.calculator(t),
            frozenset(teacher.TEACHER_Z),
            needs_cell=t is teacher.CHGNET,
        )
    if key == XTB_NAME:
        from tblite.ase import TBLite

        return Subject("GFN2-xTB (tblite)", TBLite(method="GFN2-xTB", verbosity=0))
    from matscale import pretrained
    from matscale.calc.ase_calculator import MatscaleCalculator
    from matscale.calc.model_file import load_potential

    try:
        file = pretrained.model_file(spec)
    except DataError as exc:
        raise DataError(f"{exc}; or a teacher: {', '.join(TEACHER_NAMES)}, {XTB_NAME}") from None
    potential = load_potential(file)
    calc = MatscaleCalculator(potential, head=head or pretrained.default_head(potential))
    shipped = file.parent == pretrained.MODELS
    return Subject(f"{spec if shipped else file.parent.name} ({calc.head})", calc, _covered(calc))


def _covered(calc: Any) -> frozenset[int]:
    """The atomic numbers a matscale calculator's head saw in training."""
    graph = calc.potential.graph
    return frozenset(graph.elements[graph.heads.index(calc.head)])
