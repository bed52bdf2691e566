"""An ASE calculator for matscale models: :class:`MatscaleCalculator`.

    calc = MatscaleCalculator.from_file("data/runs/demo/model.pt", head="emt-metals")
    atoms.calc = calc
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

Every call builds the graph through the model's saved transform (cutoff, neighbour limit,
elements per head) and runs the network through :func:`matscale.calc.inference.predict_graph`,
the same path as batched prediction and ``matscale eval``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from matscale.calc.inference import as_structure, predict_graph
from matscale.calc.model_file import Potential, load_potential
from matscale.data.batch import collate
from matscale.data.transform import GeometryDtype


class MatscaleCalculator(Calculator):
    """ASE calculator of a matscale :class:`Potential`.

    Properties: ``energy`` and ``free_energy`` (eV; the same number: the model has no
    electronic entropy), ``energies`` (per atom, eV; they sum to the energy), ``forces``
    (eV/Å), ``stress`` (eV/Å³, Voigt xx yy zz yz xz xy, ASE's sign; cells periodic in all three
    directions, conservative models only).

    Parameters
    ----------
    potential: the model and its transform (:func:`matscale.calc.load_potential`).
    head: level of theory by head name; None: the model's default head (shipped models), or
        its only head (an error listing the heads if it has several).
    domains: spread every calculation over the processes of the default ``torch.distributed``
        group by spatial domains (:mod:`matscale.calc.domain`): each process builds the graph
        of its slab only, every process gets the whole result. Every process must run the same
        script on the same atoms (launched by torchrun or srun); conservative models only.
    """

    implemented_properties: list[str] = [  # noqa: RUF012 (ASE's protocol: a class-level list)
        "energy",
        "free_energy",
        "energies",
        "forces",
        "stress",
    ]

    def __init__(
        self, potential: Potential, head: str | None = None, domains: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.potential = potential
        self.domains = domains
        if domains:
            import torch.distributed as dist

            if not dist.is_initialized():
                raise RuntimeError(
                    "domains=True needs a torch.distributed process group: launch with "
                    "torchrun (or srun) and call torch.distributed.init_process_group first"
                )
            if not potential.conservative:
                raise ValueError("domains=True needs a conservative model (forces = −∂E/∂x)")
        if head is None:  # a shipped model names the head it is used with unless told
            head = potential.info.get("default_head")
        self._use_head(head)
        # what ASE records of a calculator (todict(), trajectories): the model and the head
        self.parameters.update(model=potential.info.get("path"), head=self.head)
        if not potential.conservative:  # ASE (and matscale md) read this to know what we give
            self.implemented_properties = [p for p in self.implemented_properties if p != "stress"]

    def _use_head(self, head: str | None) -> str:
        """Compute with ``head`` from now on (checked: an unknown one is a DataError listing
        the model's heads); returns its name."""
        graph = self.potential.graph
        self.head = graph.heads[graph.head_index(head)]
        self._head_index = graph.heads.index(self.head)
        return self.head

    @property
    def labelled_by(self) -> str:
        """What a record of this calculator's numbers says made them: the model and head."""
        from matscale.calc.inference import labeller

        return labeller(self.potential, self.head)

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """ASE's ``set``: ``head=`` switches the head the calculator computes with (checked as
        in the constructor; earlier results are dropped). The model cannot be changed: load
        another calculator."""
        if "model" in kwargs and kwargs["model"] != self.parameters.get("model"):
            raise ValueError("a calculator's model cannot be changed: create another calculator")
        unknown = sorted(set(kwargs) - {"head", "model"})
        if unknown:  # kept in parameters and written to trajectories, they would claim effects
            raise ValueError(
                f"MatscaleCalculator has no setting {', '.join(map(repr, unknown))}: it takes "
                "head= (also in set); device, dtype and compile are chosen when the model is "
                "loaded (MatscaleCalculator.from_file(path, head=..., device=..., dtype=...))"
            )
        if "head" in kwargs and hasattr(self, "potential"):  # not during ASE's __init__
            kwargs["head"] = self._use_head(kwargs["head"])
        changed = dict(super().set(**kwargs))
        if changed:  # ASE leaves it to subclasses: results of the old head must not be reused
            self.reset()
        return changed

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        head: str | None = None,
        device: str | torch.device = "cpu",
        dtype: GeometryDtype | torch.dtype | None = None,
        compile: bool = False,
        **kwargs: Any,
    ) -> MatscaleCalculator:
        """The calculator of a model file (``model.pt``; or a shipped model's name) on
        ``device``, in ``dtype`` (``"float64"`` for finite differences and phonons; None: the
        model's own); ``compile``: see :func:`matscale.calc.load_potential`."""
        from matscale.pretrained import model_file  # the package's models: imports this module

        potential = load_potential(model_file(path), device=device, dtype=dtype, compile=compile)
        return cls(potential, head=head, **kwargs)

    @classmethod
    def pretrained(
        cls,
        name: str,
        head: str | None = None,
        device: str | torch.device = "cpu",
        dtype: GeometryDtype | torch.dtype | None = None,
        compile: bool = False,
        **kwargs: Any,
    ) -> MatscaleCalculator:
        """The calculator of the shipped model ``name`` (:func:`matscale.pretrained.available`
        lists them), offline; ``head`` None uses the model's default head; ``compile``: see
        :func:`matscale.calc.load_potential`."""
        from matscale import pretrained

        potential = pretrained.load(name, device=device, dtype=dtype, compile=compile)
        return cls(potential, head=head, **kwargs)

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | tuple[str, ...] = ("energy",),
        system_changes: list[str] = all_changes,
    ) -> None:
        """Fill ``self.results`` for ``atoms`` (ASE's calculator protocol)."""
        super().calculate(atoms, properties, system_changes)
        assert self.atoms is not None
        structure = as_structure(self.atoms)
        periodic = bool(self.atoms.pbc.all())
        if "stress" in properties:
            if not periodic:
                raise PropertyNotImplementedError(
                    f"stress needs a cell periodic in all three directions (pbc={self.atoms.pbc})"
                )
            if not self.potential.conservative:
                raise PropertyNotImplementedError(
                    "stress needs a conservative model; this one has a direct force head"
                )
        # forces come with every call: MD and relaxations ask for them right after the energy
        stress = periodic and self.potential.conservative
        if self.domains:
            from matscale.calc.domain import predict_domain

            self.results = dict(
                predict_domain(self.potential, structure, head=self.head, stress=stress)
            )
            self.results["free_energy"] = self.results["energy"]
            return
        graph = collate([self.potential.graph.sample(structure, self._head_index)])
        out = predict_graph(self.potential, graph, forces=True, stress=stress)
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["node_energy"].double().cpu().numpy(),
            "forces": out["forces"].double().cpu().numpy(),
        }
        if stress:
            self.results["stress"] = out["stress"][0].double().cpu().numpy()
