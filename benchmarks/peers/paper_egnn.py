"""The paper's EGNN as HydraGNN lays it out, written here from its description
(``../shared/PAPER.md``, "Model"), so that what matscale's EGNN changes is measured against it.

Per layer (E_GCL), for each edge (i, j) with r_ij = x_j − x_i (periodic images included):

    m_ij = ReLU(W2 ReLU(W1 [h_i, h_j, |r_ij|², |r_ij|]))     edge MLP; edge feature = bond length
    h_i  ← W4 ReLU(W3 [h_i, Σ_j m_ij])                         node MLP, no residual, no norm
    x_i  ← x_i + mean_j (x_i − x_j) tanh(φ_x(m_ij))            every layer but the last

Heads: energy per atom = MLP(mean_i h_i) with hidden sizes 50, 50, 50, 25 (the shared 2 × 50
then [50, 25]); total energy = atoms × that. Forces: a per-atom MLP [200, 200] → 3 on the last
node features, trained directly (not −∇E, not equivariant). The ``conservative`` variant keeps
the layers and the energy head and takes forces as −∂E/∂x instead.

What the description leaves open, and the choice made (the same help every peer gets):
the paper's "4 node features" are not specified, so atoms enter as a learned embedding of Z
(a linear layer on one-hot Z); outputs are scaled by the data's force RMS and shifted by the
per-element reference energies from the store's statistics, as matscale's own model and MACE
are; the graph is matscale's (5 Å, every neighbour: no 50-neighbour cap), PyTorch's default
initialisation. No cutoff envelope: messages jump when an atom crosses the cutoff, as in the
paper.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from matscale.data.atomgraph import AtomGraph

MAX_Z = 118


@dataclass(kw_only=True)
class PaperEGNNConfig:
    """Architecture of :class:`PaperEGNN` (the paper's sizes: width 250 … 15,000, depth 3)."""

    width: int = 64
    """Hidden size H of node features and messages."""
    depth: int = 3
    """E_GCL layers."""
    force_head: Literal["direct", "conservative"] = "direct"
    """The paper's per-atom force MLP, or −∂E/∂x of the same energy."""


def _mlp(sizes: list[int], *, last_act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_act:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EGCL(nn.Module):
    """One E_GCL layer as laid out in HydraGNN."""

    def __init__(self, width: int, *, moves_coordinates: bool) -> None:
        super().__init__()
        self.edge = _mlp([2 * width + 2, width, width], last_act=True)
        self.node = _mlp([2 * width, width, width])
        self.coord: nn.Sequential | None = None
        if moves_coordinates:
            self.coord = nn.Sequential(
                nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1, bias=False), nn.Tanh()
            )
            # EGNN's reference code starts the coordinate updates near zero
            nn.init.xavier_uniform_(self.coord[2].weight, gain=0.001)

    def forward(
        self, h: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h: [N, H]; edge_index: [2, E]; vectors: [E, 3] Å (r_ij) → new h [N, H] and the
        displacement of each atom [N, 3] Å (None in the last layer)."""
        i, j = edge_index
        d2 = (vectors * vectors).sum(-1, keepdim=True)  # [E, 1] Å²
        d = torch.sqrt(d2 + 1e-12)
        m = self.edge(torch.cat([h[i], h[j], d2, d], dim=-1))  # [E, H]
        agg = torch.zeros_like(h).index_add_(0, i, m)
        h = self.node(torch.cat([h, agg], dim=-1))
        if self.coord is None:
            return h, None
        trans = -vectors * self.coord(m)  # (x_i − x_j) φ_x(m_ij), [E, 3]
        count = torch.zeros(h.shape[0], 1, dtype=vectors.dtype, device=vectors.device)
        count.index_add_(0, i, torch.ones_like(d))
        shift = torch.zeros(h.shape[0], 3, dtype=vectors.dtype, device=vectors.device)
        shift.index_add_(0, i, trans)
        return h, shift / count.clamp_min(1.0)  # mean over neighbours


class PaperEGNN(nn.Module):
    """AtomGraph → ``energy`` [B] eV (float64), ``energy_net`` [B] eV and, with the direct
    head, ``forces`` [N, 3] eV/Å — the interface of :class:`matscale.models.egnn.EGNN`, so
    matscale's training step, physics and evaluation run it unchanged."""

    reference_energy: torch.Tensor

    def __init__(self, cfg: PaperEGNNConfig, *, energy_scale: float, force_scale: float) -> None:
        super().__init__()
        self.config = cfg
        w = cfg.width
        self.embedding = nn.Embedding(MAX_Z + 1, w)
        self.layers = nn.ModuleList(
            EGCL(w, moves_coordinates=k < cfg.depth - 1) for k in range(cfg.depth)
        )
        self.energy_head = _mlp([w, 50, 50, 50, 25, 1])
        self.force_mlp = _mlp([w, 200, 200, 3]) if cfg.force_head == "direct" else None
        self.energy_scale = energy_scale
        self.force_scale = force_scale
        self.register_buffer("reference_energy", torch.zeros(MAX_Z + 1, dtype=torch.float64))

    def forward(self, graph: AtomGraph) -> dict[str, torch.Tensor]:
        """See the class docstring."""
        edge_index = graph.edge_index
        i, j = edge_index
        vectors0 = graph.edge_vectors()
        vectors = vectors0
        h = self.embedding(graph.numbers)
        displacement: torch.Tensor | None = None
        for layer in self.layers:
            h, shift = layer(h, edge_index, vectors)
            if shift is not None:
                displacement = shift if displacement is None else displacement + shift
                vectors = vectors0 + displacement[j] - displacement[i]
        n = graph.n_atoms.to(h.dtype)  # [B]
        pooled = torch.zeros(graph.num_graphs, h.shape[1], dtype=h.dtype, device=h.device)
        pooled = pooled.index_add_(0, graph.batch, h) / n[:, None]  # mean pooling
        energy_net = self.energy_head(pooled).squeeze(-1) * n * self.energy_scale  # [B] eV
        ref = self.reference_energy[graph.numbers]
        energy_ref = ref.new_zeros(graph.num_graphs).index_add_(0, graph.batch, ref)
        out = {"energy": energy_net.double() + energy_ref, "energy_net": energy_net}
        if self.force_mlp is not None:
            out["forces"] = self.force_mlp(h) * self.force_scale
        return out


def build_paper_egnn(cfg: PaperEGNNConfig, stats: list[dict]) -> PaperEGNN:
    """The paper's EGNN with the data statistics of one or more sources (as ``matscale data
    pack`` writes them per source): outputs scaled by their mean force RMS (eV/Å), reference
    energies per element (eV) from each source in turn."""
    rms = sum(float(st["force_rms_eV_per_A"]) for st in stats) / len(stats)
    model = PaperEGNN(cfg, energy_scale=rms, force_scale=rms)
    for st in stats:
        for z, e in st["reference_energy_eV"].items():
            model.reference_energy[int(z)] = float(e)
    return model
