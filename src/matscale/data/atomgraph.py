"""The model's input: :class:`AtomGraph`, a batch of structures as concatenated tensors.

No padding: atoms of all structures are concatenated, ``batch`` says which structure each atom
belongs to, and edge indices are offset into the concatenation. Geometry is float32 (Å); the
integer cell ``shifts`` are kept so that edge vectors can be recomputed from ``positions`` and
``cell`` inside autograd (forces as −∂E/∂positions, stress through a strain of the cell).

============ =========== ========= ===================================================
field        shape       dtype     meaning (units)
============ =========== ========= ===================================================
numbers      [N]         int64     atomic numbers
positions    [N, 3]      float32   Å
batch        [N]         int64     structure of each atom, 0..B-1
cell         [B, 3, 3]   float32   Å, lattice vectors as rows
pbc          [B, 3]      bool      periodic directions
edge_index   [2, E]      int64     (centre i, neighbour j), offset into the batch
shifts       [E, 3]      float32   integer cell shifts S: r_ij = x_j − x_i + S @ cell
n_atoms      [B]         int64     atoms per structure
source       [B]         int64     index into the store's source names (the readout head)
energy       [B]         float64   eV (0 where absent; see has_energy)
forces       [N, 3]      float32   eV/Å (0 where absent)
stress       [B, 6]      float32   eV/Å³ Voigt xx yy zz yz xz xy (0 where absent)
has_energy   [B]         bool      label present
has_forces   [B]         bool      label present (for every atom of that structure)
has_stress   [B]         bool      label present
index        [B]         int64     store index of each structure (−1 outside a store)
============ =========== ========= ===================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class AtomGraph:
    """A batch of structures; see the module docstring for every field's shape and unit."""

    numbers: torch.Tensor
    positions: torch.Tensor
    batch: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    n_atoms: torch.Tensor
    source: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    has_energy: torch.Tensor
    has_forces: torch.Tensor
    has_stress: torch.Tensor
    index: torch.Tensor

    @property
    def num_graphs(self) -> int:
        """Number of structures B."""
        return self.n_atoms.shape[0]  # no int(): under torch.compile that fixes B

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AtomGraph:
        """The same batch on ``device``."""
        return AtomGraph(
            **{
                f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in fields(self)
            }
        )

    def pin_memory(self) -> AtomGraph:
        """Page-locked copy for fast host-to-GPU transfer (DataLoader calls this)."""
        return AtomGraph(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def edge_vectors(self) -> torch.Tensor:
        """[E, 3] Å: r_ij = x_j − x_i + S @ cell, differentiable in positions and cell."""
        i, j = self.edge_index
        cell_of_edge = self.cell[self.batch[i]]  # [E, 3, 3]
        # elementwise, not a matmul: autocast leaves it in float32 when the network runs bf16
        offsets = (self.shifts.unsqueeze(-1) * cell_of_edge).sum(dim=1)  # [E, 3] Å
        return self.positions[j] - self.positions[i] + offsets
