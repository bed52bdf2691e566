"""MACE (``mace-torch``) as a peer model for matscale's benchmarks, fed matscale's AtomGraph.

Runs only in the separate environment ``.venv-mace`` made by ``benchmarks/peers/setup_mace``
(mace-torch and e3nn at the versions in ``benchmarks/peers/mace-constraints.txt``)::

    settings = MaceSettings()
    model = build_mace(settings, atomic_numbers=[28, 29, 46, 79], atomic_energies_eV=e0,
                       avg_num_neighbors=40.0, r_max=5.0, scale=force_rms)
    out = model(graph, training=True)   # {"energy": [B] eV, "forces": [N, 3] eV/Å, ...}

The network is ``mace.modules.ScaleShiftMACE`` built as MACE's own training script builds its
default model (``mace_run_train --model MACE``); :class:`MaceGraphModel` only converts the
graph: matscale's edge (centre i, neighbour j) with integer cell shift S becomes MACE's edge
(sender i, receiver j) with shift S @ cell in Å, so that MACE's edge vector
``positions[receiver] − positions[sender] + shifts`` is matscale's r_ij = x_j − x_i + S @ cell.
The lists are full (both directions), so which end MACE aggregates on changes nothing.
Forces are MACE's own −∂E/∂x.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from matscale.data.atomgraph import AtomGraph

# e3nn 0.4.4 (the version mace-torch pins) unpickles a tuple holding ``slice`` objects from its
# constants.pt at import, through torch.load with torch ≥ 2.6's default weights_only=True,
# which rejects ``slice``. mace's own __init__ works around it by setting
# TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the whole process, which would make every later
# torch.load here (matscale checkpoints included) unpickle arbitrary objects. Instead: allow
# just ``slice`` while e3nn is imported, and put the variable back as it was.
_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_env_before = os.environ.get(_NO_WEIGHTS_ONLY)
# mace prints a notice about its optional CUDA backend (cuequivariance) at import; benchmark
# output stays clean without it
with torch.serialization.safe_globals([slice]), contextlib.redirect_stdout(io.StringIO()):
    import e3nn.o3  # noqa: F401  (first import: loads the constants)
    from e3nn import o3
    from mace import modules as mace_modules
if _env_before is None:
    os.environ.pop(_NO_WEIGHTS_ONLY, None)
else:
    os.environ[_NO_WEIGHTS_ONLY] = _env_before

#: Largest atomic number (the lookup table's size).
MAX_Z = 118


@dataclass(kw_only=True)
class MaceSettings:
    """Architecture of the MACE peer (the cutoff r_max is the caller's, shared with matscale).

    The defaults follow ``mace_run_train``'s own defaults except for the size: 32 channels,
    which gives 102,320 parameters for 4 elements (≈8.8k more per extra element: the weights of
    the symmetric contraction are per element).
    """

    num_channels: int = 32
    """Channels C of every hidden irrep: node features are C×0e + C×1o for max_L=1."""
    max_L: int = 1
    """Highest rotation order L of the hidden node features (0: invariant MACE)."""
    max_ell: int = 3
    """Highest order ℓ of the spherical harmonics of edge directions (MACE's default)."""
    correlation: int = 3
    """Body order − 1 of the symmetric product of each layer (3: four-body messages)."""
    num_interactions: int = 2
    """Message-passing layers; the receptive field is num_interactions × r_max."""
    num_bessel: int = 8
    """Bessel radial basis functions of the edge length."""
    num_polynomial_cutoff: int = 5
    """Exponent p of the polynomial cutoff envelope (smoothness at r_max)."""
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    """Hidden sizes of the MLP mapping the radial basis to the tensor-product weights."""
    mlp_irreps: str = "16x0e"
    """Hidden irreps of the non-linear readout after the last layer."""
    gate: Literal["silu", "tanh", "abs", "None"] = "silu"
    """Non-linearity of the readout MLP."""
    interaction: str = "RealAgnosticResidualInteractionBlock"
    """Interaction block of layers 2.. (a key of ``mace.modules.interaction_classes``)."""
    interaction_first: str = "RealAgnosticInteractionBlock"
    """Interaction block of layer 1 (``mace_run_train --model MACE`` forces this one)."""
    use_reduced_cg: bool = False
    """Reduced generalised Clebsch–Gordan coefficients in the product (MACE CLI default off)."""
    pair_repulsion: bool = False
    """Add MACE's ZBL pair repulsion (for very short distances)."""
    radial_type: Literal["bessel", "gaussian", "chebyshev"] = "bessel"
    """Radial basis family."""
    jit_optimize: bool = False
    """Run forward with TorchScript's graph optimiser on (a runtime switch, not architecture).
    e3nn scripts its spherical harmonics and tensor products; with the optimiser on, torch
    2.13 on a CPU re-profiles and re-optimises them for every new input shape, ~2 s a call
    for a 32-atom batch, where the interpreter takes ~0.05 s. Every training batch has a new
    shape, so it stays off: no warm-up, and within ~5% of the optimised speed at a fixed
    shape (measured on 2 CPU cores, float32)."""

    def hidden_irreps(self) -> o3.Irreps:
        """C×(0e + 1o + 2e + ...) up to max_L, as ``mace_run_train`` makes it."""
        sh = o3.Irreps.spherical_harmonics(self.max_L)
        return o3.Irreps((self.num_channels * sh).sort().irreps.simplify())


@dataclass(frozen=True)
class MaceGraphConfig:
    """What matscale's training and evaluation code reads from a model (``model.config``)."""

    settings: MaceSettings
    """The architecture the model was built with."""
    r_max: float
    """Cutoff radius (Å) the AtomGraphs must be built with."""
    force_head: Literal["direct"] = "direct"
    """How matscale's ``predict``/``train_step`` treat the model: "direct" means "forward
    returns the forces itself; keep them". MACE's forces are conservative (−∂E/∂x by MACE's
    own autograd) but come out of forward, so this is the path they take; matscale's
    "conservative" path would differentiate the energy a second time."""


class MaceGraphModel(nn.Module):
    """A ``ScaleShiftMACE`` that takes a matscale :class:`AtomGraph`.

    ``forward(graph, training=None)`` returns

    ``energy``      [B] eV, float64: MACE's interaction energy + Σ_atoms E0(Z) summed in float64
                    (MACE sums E0 in the model dtype, which rounds a float32 total of 10⁴ eV
                    to ~1 meV; matscale's own models return float64 energies too),
    ``energy_net``  [B] eV, model dtype: the learned part (what MACE differentiates),
    ``forces``      [N, 3] eV/Å, model dtype: MACE's −∂E/∂positions.

    All structures are read out by MACE's single head, whatever ``graph.source`` says.
    ``config`` (:class:`MaceGraphConfig`) lets matscale's ``predict``, ``train_step`` and
    ``evaluate`` drive the model as one of their own.
    """

    zs: torch.Tensor  # [n_elements] Z of each one-hot column, ascending
    z_index: torch.Tensor  # [MAX_Z + 1] one-hot column of each Z, −1 if unknown
    e0: torch.Tensor  # [n_elements] eV, float64: the same E0 that MACE holds

    def __init__(
        self,
        mace: nn.Module,
        config: MaceGraphConfig,
        atomic_numbers: list[int],
        atomic_energies_eV: dict[int, float],
    ) -> None:
        super().__init__()
        self.mace = mace
        self.config = config
        zs = torch.tensor(atomic_numbers, dtype=torch.int64)
        index = torch.full((MAX_Z + 1,), -1, dtype=torch.int64)
        index[zs] = torch.arange(len(zs))
        self.register_buffer("zs", zs)
        self.register_buffer("z_index", index)
        # kept here in float64 for the total energy (MACE sums its copy in the model dtype)
        self.register_buffer(
            "e0",
            torch.tensor([atomic_energies_eV[z] for z in atomic_numbers], dtype=torch.float64),
        )

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .float()/.double() cast every floating buffer; e0 stays float64 (sums reach 10⁴ eV)
        e0 = self.e0
        out = super()._apply(fn, recurse)
        self.e0 = e0.to(device=self.e0.device, dtype=torch.float64)
        return out

    def mace_inputs(self, graph: AtomGraph) -> dict[str, torch.Tensor]:
        """MACE's input dict for ``graph``, in the model's dtype.

        Keys: node_attrs [N, n_elements] one-hot, positions [N, 3] Å (requires grad),
        edge_index [2, E] (sender, receiver), shifts [E, 3] Å, unit_shifts [E, 3],
        cell [B, 3, 3] Å, batch [N], ptr [B+1]. No ``head``: MACE then reads every atom out
        through head 0, its only one.
        """
        dtype = next(self.mace.parameters()).dtype  # float32, or float64 after .double()
        numbers = graph.numbers
        column = self.z_index[numbers.clamp(0, MAX_Z)]
        bad = (column < 0) | (numbers < 0) | (numbers > MAX_Z)
        if bool(bad.any()):  # one host sync per call; a peer in a benchmark can afford it
            unknown = sorted({int(z) for z in numbers[bad].tolist()})
            names = [chemical_symbols[z] if 0 < z <= MAX_Z else f"Z={z}" for z in unknown]
            known = [chemical_symbols[int(z)] for z in self.zs.tolist()]
            raise ValueError(
                f"element(s) {', '.join(names)} not in this MACE model's table {known}"
            )
        node_attrs = torch.nn.functional.one_hot(column, len(self.zs)).to(dtype)
        # a detached alias: MACE calls positions.requires_grad_(True), which must not flip
        # the caller's tensor; a positions tensor that already requires grad (a strain for
        # stress, a caller's own graph) is kept so that gradients still reach it
        positions = graph.positions.to(dtype)
        if not positions.requires_grad:
            positions = positions.detach()
        cell = graph.cell.to(dtype)
        sender, _ = graph.edge_index
        unit_shifts = graph.shifts.to(dtype)
        # S @ cell of the centre atom's structure, elementwise as AtomGraph.edge_vectors does
        shifts = (unit_shifts.unsqueeze(-1) * cell[graph.batch[sender]]).sum(dim=1)
        ptr = torch.zeros(graph.num_graphs + 1, dtype=torch.int64, device=numbers.device)
        ptr[1:] = torch.cumsum(graph.n_atoms, dim=0)
        return {
            "node_attrs": node_attrs,
            "positions": positions,
            "edge_index": graph.edge_index,
            "shifts": shifts,
            "unit_shifts": unit_shifts,
            "cell": cell,
            "batch": graph.batch,
            "ptr": ptr,
        }

    def forward(self, graph: AtomGraph, training: bool | None = None) -> dict[str, torch.Tensor]:
        """Energy [B] eV (float64), energy_net [B] eV and forces [N, 3] eV/Å of ``graph``.

        ``training=True`` keeps the graph of the forces (create_graph) for a force loss;
        ``None`` follows the module's mode (``.train()``/``.eval()``), which is how matscale's
        ``predict`` calls a model (with the graph only).
        """
        if training is None:
            training = self.training
        data = self.mace_inputs(graph)
        # forces are autograd's: on even when the caller evaluates under no_grad
        with (
            torch.enable_grad(),
            torch.jit.optimized_execution(self.config.settings.jit_optimize),
        ):
            out = self.mace(data, training=training, compute_force=True)
        inter = out["interaction_energy"]
        forces = out["forces"]
        assert inter is not None and forces is not None
        atom_e0 = self.e0[self.z_index[graph.numbers]]  # [N] eV, float64
        e0 = atom_e0.new_zeros(graph.num_graphs).index_add_(0, graph.batch, atom_e0)
        return {"energy": e0 + inter.double(), "energy_net": inter, "forces": forces}


def build_mace(
    settings: MaceSettings,
    *,
    atomic_numbers: list[int],
    atomic_energies_eV: dict[int, float],
    avg_num_neighbors: float,
    r_max: float,
    scale: float,
    shift: float = 0.0,
) -> MaceGraphModel:
    """A ``ScaleShiftMACE`` wrapped to take an :class:`AtomGraph`.

    Parameters
    ----------
    settings: the architecture.
    atomic_numbers: the elements the model knows (Z, any order; sorted here as MACE's own
        tables are); one one-hot column each.
    atomic_energies_eV: E0(Z) in eV for every Z of ``atomic_numbers`` (isolated-atom or
        fitted reference energies; the network learns the rest).
    avg_num_neighbors: mean neighbour count within r_max of the training data (messages are
        summed and divided by it).
    r_max: cutoff radius (Å); the AtomGraph must be built with this cutoff.
    scale: eV, multiplies the per-atom interaction energy (MACE uses the force RMS × 1 Å).
    shift: eV, added to each atom's interaction energy (MACE's default model uses 0).

    The parameters get torch's default dtype; ``.double()`` makes a float64 model.
    """
    zs = sorted({int(z) for z in atomic_numbers})
    if len(zs) != len(atomic_numbers):
        raise ValueError(f"atomic_numbers has repeats: {atomic_numbers}")
    bad = [z for z in zs if not 1 <= z <= MAX_Z]
    if bad:
        raise ValueError(f"atomic numbers must lie in 1..{MAX_Z}, got {bad}")
    missing = [chemical_symbols[z] for z in zs if z not in atomic_energies_eV]
    if missing:
        raise ValueError(f"atomic_energies_eV has no E0 for {', '.join(missing)}")
    e0 = np.array([atomic_energies_eV[z] for z in zs], dtype=np.float64)
    with warnings.catch_warnings():
        # e3nn 0.4.4 torch.jit.scripts its generated tensor products: torch 2.13 warns that
        # jit.script is deprecated and that e3nn's classes carry instance annotations;
        # both are harmless here and repeat dozens of times per model
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
        warnings.filterwarnings("ignore", message=r"The TorchScript type system")
        mace = mace_modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=settings.num_bessel,
            num_polynomial_cutoff=settings.num_polynomial_cutoff,
            max_ell=settings.max_ell,
            interaction_cls=mace_modules.interaction_classes[settings.interaction],
            interaction_cls_first=mace_modules.interaction_classes[settings.interaction_first],
            num_interactions=settings.num_interactions,
            num_elements=len(zs),
            hidden_irreps=settings.hidden_irreps(),
            MLP_irreps=o3.Irreps(settings.mlp_irreps),
            atomic_energies=e0,
            avg_num_neighbors=float(avg_num_neighbors),
            atomic_numbers=zs,
            correlation=settings.correlation,
            gate=mace_modules.gate_dict[settings.gate],
            pair_repulsion=settings.pair_repulsion,
            use_reduced_cg=settings.use_reduced_cg,
            radial_MLP=list(settings.radial_mlp),
            radial_type=settings.radial_type,
            atomic_inter_scale=float(scale),
            atomic_inter_shift=float(shift),
        )
    config = MaceGraphConfig(settings=settings, r_max=float(r_max))
    return MaceGraphModel(mace, config, zs, {z: float(atomic_energies_eV[z]) for z in zs})


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters (buffers such as E0 and scale/shift excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
