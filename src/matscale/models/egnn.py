"""matscale's EGNN: the paper's E(n)-equivariant layer, made smooth, extensive and multi-head.

Per layer (pre-norm, residual), for each edge (i, j) with vector r_ij and distance d_ij:

    m_ij = φ_e([h_i, h_j, R(d_ij)]) · u(d⁰_ij)          edge MLP, gated by the cutoff envelope
    h_i ← h_i + φ_h([h_i, Σ_j m_ij / K])                node MLP (K: mean neighbour count)
    D_i ← D_i − Σ_j r_ij tanh(φ_x(m_ij)) u(d⁰_ij) / K   coordinate (vector) channel
    r_ij ← r⁰_ij + D_j − D_i                            next layer's geometry (equivariant)

and, with ``vector_channels`` C > 0, vector features v_i [3, C] (zero before the first layer):

    v_i ← v_i + Σ_j (g_ij r̂_ij + g'_ij v_j) / K         gates [g, g'] = W_g m_ij, no bias
    h_i ← h_i + φ_h([h_i, Σ_j m_ij / K, ⟨U v_i, V v_i⟩])  the node update also sees angles

R is a Bessel radial basis, u a polynomial envelope of the *input* distance d⁰ (so every
contribution of an edge vanishes smoothly at the cutoff), φ are two-layer MLPs with a smooth
activation. The first linear of φ_e is computed factored, W_a h_i + W_b h_j + W_r R, as per-node
products gathered onto edges: the same function as Linear([h_i, h_j, R]) with ~E/N times fewer
FLOPs in its largest term.

Energy = Σ_atoms (scale_s · readout_s(h_i) + e_ref[s, Z_i] + ½ Σ_j ψ(d_ij)), with one readout
head per data source s (level of theory), per-element reference energies from the data
statistics and ψ the repulsive pair prior of ``models/repulsion.py`` (ZBL, zero beyond short
contacts; ``pair_repulsion``).
Forces: −∂E/∂x by autograd (``models/physics.py``), or a direct equivariant head
F_i = Σ_j φ_f(m_ij) r̂_ij when ``force_head == "direct"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from matscale.data.atomgraph import AtomGraph
from matscale.models.radial import BesselBasis, polynomial_envelope
from matscale.models.repulsion import pair_prior
from matscale.models.scatter import gather_rows, scatter_sum, sum_per_graph

MAX_Z = 118
#: The activations a config may name (an explicit table, no lookup by import path).
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(kw_only=True)
class EGNNConfig:
    """Architecture of :class:`EGNN`; saved with every checkpoint."""

    width: int = 128
    """Hidden size H of node features and messages. Multiples of 16 run fastest: the matmul
    library ran [E, 78] x [78, 78] at ~70 % of the fp32 peak, at 80 at ~98 %
    (benchmarks/gemm_widths.py); GPUs' tensor cores want multiples of 8 or 16 too."""
    depth: int = 3
    """Number of interaction layers."""
    cutoff: float = 5.0
    """Radius of the graph (Å)."""
    n_radial: int = 8
    """Bessel radial basis functions of the distance."""
    envelope_p: int = 6
    """Exponent of the polynomial cutoff envelope (smoothness at the cutoff)."""
    activation: Literal["silu", "relu", "gelu"] = "silu"
    """Activation of every MLP; ReLU (the paper's) makes −∇E piecewise constant."""
    norm: Literal["none", "layer", "rms"] = "none"
    """Normalisation of node features before each layer (the paper had none)."""
    residual: bool = False
    """Residual node updates h ← h + φ_h(...); off by default, as in the paper (h replaced):
    at depth 3 residuals trained slower per CPU-minute (docs/peers.md, ablations)."""
    coord_update: bool = False
    """EGNN's coordinate channel: layers move a copy of the positions equivariantly, which
    gives later layers angular (many-body) information. Off by default: at equal training
    time it cost more steps than it gained in accuracy (docs/peers.md, ablations)."""
    factored: bool = True
    """Compute the first edge linear as per-node products gathered onto edges."""
    vector_channels: int = 0
    """C equivariant vector features per atom (0: none), the coordinate channel generalised:
    each layer adds Σ_j g_ij r̂_ij + g'_ij v_j (gates g from the messages) and feeds the
    invariants ⟨U v_i, V v_i⟩ to the node update, which gives every layer angular
    (many-body) information at O(E·C) cost."""
    pair_repulsion: bool = True
    """Add the ZBL pair prior of ``models/repulsion.py`` to the energy: zero beyond 0.75x the
    sum of two atoms' covalent radii, rising without bound as they meet, so that contacts
    shorter than any in training repel instead of taking whatever the network extrapolates."""
    readout_width: int = 0
    """Hidden size of each readout head; 0 means width // 2."""
    force_head: Literal["conservative", "direct"] = "conservative"
    """Forces as −∂E/∂x (energy-conserving) or from a direct equivariant head (cheaper)."""
    heads: tuple[str, ...] = ("default",)
    """Data sources, one readout head each, in the store's source order."""
    avg_neighbours: float = 20.0
    """Mean neighbour count K that normalises sums over edges (set from data statistics)."""

    def __post_init__(self) -> None:
        if self.vector_channels < 0:
            raise ValueError(f"vector_channels must be >= 0, got {self.vector_channels}")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be positive, got {self.width}, {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not in {sorted(ACTIVATIONS)}")
        if self.norm not in ("none", "layer", "rms"):
            raise ValueError(f"norm {self.norm!r} not in none, layer, rms")
        if self.force_head not in ("conservative", "direct"):
            raise ValueError(f"force_head {self.force_head!r} not in conservative, direct")
        self.heads = tuple(self.heads)

    @property
    def readout_hidden(self) -> int:
        """Resolved hidden size of the readout heads."""
        return self.readout_width or max(1, self.width // 2)


#: E[f(z)²] for z ~ N(0, 1): the share of a unit input's second moment that the activation
#: passes on (numerical quadrature); a following linear with gain 1/√(this) restores it.
SECOND_MOMENT = {"silu": 0.3563, "relu": 0.5, "gelu": 0.4258}


def _linear(
    in_features: int,
    out_features: int,
    bias: bool = True,
    *,
    fan_in: int | None = None,
    gain: float = 1.0,
) -> nn.Linear:
    """A Linear with weights N(0, gain²/fan_in): unit-variance outputs for unit-variance
    inputs at any width (PyTorch's default gives a third of that, which compounds with depth).
    ``fan_in`` defaults to ``in_features``; a block of a larger, split linear passes the whole
    fan-in."""
    std = gain * (fan_in or in_features) ** -0.5
    return _ScaledLinear(in_features, out_features, bias, std=std)


class _ScaledLinear(nn.Linear):
    """nn.Linear drawing its weights from N(0, std²) and zeroing its bias in
    ``reset_parameters``, which ``nn.Linear.__init__`` calls: the draw happens inside the
    constructor, where DeepSpeed's ``zero.Init`` (ZeRO-3 building a model already sharded)
    still sees whole tensors — after it, the module's weights are shards."""

    std: float

    def __init__(self, in_features: int, out_features: int, bias: bool, *, std: float) -> None:
        # before nn.Linear.__init__, whose reset_parameters needs it (not a Module attribute
        # yet: plain object state)
        object.__setattr__(self, "std", std)
        super().__init__(in_features, out_features, bias=bias)

    def reset_parameters(self) -> None:
        # PyTorch's own draws first: the random stream, and so every seed's weights, stay
        # those of a plain nn.Linear re-initialised after construction
        super().reset_parameters()
        nn.init.normal_(self.weight, std=self.std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class _UnitEmbedding(nn.Embedding):
    """nn.Embedding with N(0, 1) rows, drawn in ``reset_parameters`` (inside the constructor,
    as :class:`_ScaledLinear`'s)."""

    def reset_parameters(self) -> None:
        # PyTorch's own N(0, 1) draw, then a second one: the model drew them so (the second
        # after construction) before the draw moved in here, and every seed keeps its weights
        super().reset_parameters()
        nn.init.normal_(self.weight, std=1.0)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "rms":
        return nn.RMSNorm(width)
    return nn.Identity()


class EdgeMLP(nn.Module):
    """φ_e: [h_i, h_j, R] → m_ij; the first linear factored or plain, with the same parameters."""

    def __init__(self, cfg: EGNNConfig) -> None:
        super().__init__()
        h, r = cfg.width, cfg.n_radial
        fan_in = 2 * h + r
        self.factored = cfg.factored
        self.w_centre = _linear(h, h, fan_in=fan_in)
        self.w_neighbour = _linear(h, h, bias=False, fan_in=fan_in)
        self.w_radial = _linear(r, h, bias=False, fan_in=fan_in)
        self.act = ACTIVATIONS[cfg.activation]()
        self.out = _linear(h, h)

    def forward(
        self, h: torch.Tensor, edge_index: torch.Tensor, radial: torch.Tensor
    ) -> torch.Tensor:
        """h: [N, H]; edge_index: [2, E]; radial: [E, n_radial] → messages [E, H]."""
        i, j = edge_index
        if self.factored:  # per-node products, gathered: 2·N·H² instead of 2·E·H² FLOPs
            pre = gather_rows(self.w_centre(h), i) + gather_rows(self.w_neighbour(h), j)
            pre = pre + self.w_radial(radial)
        else:
            weight = torch.cat(
                [self.w_centre.weight, self.w_neighbour.weight, self.w_radial.weight], dim=1
            )
            edges = torch.cat([gather_rows(h, i), gather_rows(h, j), radial], dim=1)
            pre = F.linear(edges, weight, self.w_centre.bias)
        return self.act(self.out(self.act(pre)))


class InteractionLayer(nn.Module):
    """One EGNN layer: messages, node update and (optionally) the coordinate channel and the
    vector channels."""

    def __init__(self, cfg: EGNNConfig, *, moves_coordinates: bool) -> None:
        super().__init__()
        h, c = cfg.width, cfg.vector_channels
        self.norm = _norm(cfg.norm, h)
        self.edge = EdgeMLP(cfg)
        if cfg.residual:  # a small update on top of h
            node_in, node_gain = _linear(2 * h + c, h), 1.0
        else:
            # the update replaces h: give it unit variance at initialisation, or features
            # shrink ~3x per layer (the aggregate starts near zero, so the fan-in counts h;
            # the activation keeps SECOND_MOMENT of the variance, the gain restores it)
            node_in = _linear(2 * h + c, h, fan_in=h)
            node_gain = SECOND_MOMENT[cfg.activation] ** -0.5
        self.node = nn.Sequential(
            node_in, ACTIVATIONS[cfg.activation](), _linear(h, h, gain=node_gain)
        )
        self.residual = cfg.residual
        self.inv_k = 1.0 / cfg.avg_neighbours
        self.coord: nn.Module | None = None
        if moves_coordinates:
            self.coord = nn.Sequential(
                _linear(h, h), ACTIVATIONS[cfg.activation](), _linear(h, 1, bias=False)
            )
        self.vector_channels = c
        if c:
            # no biases anywhere on vectors: a bias would not rotate with the structure
            self.vec_gate = _linear(h, 2 * c, bias=False)
            self.vec_u = _linear(c, c, bias=False)
            self.vec_v = _linear(c, c, bias=False)

    edge_chunk: int = 0
    """Edges per activation-checkpointed chunk of the edge terms (0: all at once). An
    execution setting, not architecture: set from outside by
    :func:`matscale.parallel.checkpointing.apply_ac`."""

    def forward(
        self,
        h: torch.Tensor,
        v: torch.Tensor | None,
        edge_index: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
        vectors: torch.Tensor,
        keep_messages: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """h: [N, H]; v: [N, 3, C] vector features (None without vector channels); radial:
        [E, n_radial]; envelope: [E]; vectors: [E, 3] Å (current r_ij).

        Returns new h [N, H], new v [N, 3, C] (or None), the messages [E, H] (None unless
        ``keep_messages``), and the displacement of each atom's coordinate copy [N, 3] Å
        (None without a coordinate channel).
        """
        x = self.norm(h)
        n_edges = edge_index.shape[1]
        sums: tuple[torch.Tensor | None, ...]
        m: torch.Tensor | None
        if self.edge_chunk <= 0 or n_edges <= self.edge_chunk:
            sums, m = self._edge_terms(x, v, edge_index, radial, envelope, vectors)
        else:
            # per-edge activations ([E, H] several times over) dominate memory on dense
            # graphs: compute them a chunk at a time and recompute each in the backward pass
            from torch.utils.checkpoint import checkpoint

            sums, kept = (None, None, None), []
            for a in range(0, n_edges, self.edge_chunk):
                b = min(a + self.edge_chunk, n_edges)
                part = (edge_index[:, a:b], radial[a:b], envelope[a:b], vectors[a:b])
                sums_c, m_c = checkpoint(self._edge_terms, x, v, *part, use_reentrant=False)
                sums = tuple(map(_add, sums, sums_c))
                if keep_messages:
                    kept.append(m_c)
            m = torch.cat(kept) if keep_messages else None
        agg, shift, dv = sums
        assert agg is not None
        inputs = [x, agg]
        if v is not None and dv is not None:
            v = v + dv
            # invariants of the vector features: per channel, the dot product of two mixes of
            # them (angles between neighbour directions: many-body information)
            inputs.append(torch.sum(self.vec_u(v) * self.vec_v(v), dim=1))  # [N, C]
        update = self.node(torch.cat(inputs, dim=-1))
        h = h + update if self.residual else update
        return h, v, (m if keep_messages else None), shift

    # The written-out forces' two passes over a layer are methods, not only free functions,
    # so that a sharding wrapper can treat each call as it treats ``forward``: FSDP2 gathers
    # the layer's weights around a registered method and again for its backward
    # (matscale.parallel.fsdp), one layer at a time.

    def explicit_forward(
        self,
        h: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """:func:`matscale.models.explicit_forces.layer_forward` of this layer."""
        from matscale.models.explicit_forces import layer_forward

        return layer_forward(self, h, i, j, radial, envelope)

    def explicit_reverse(
        self,
        g_out: torch.Tensor,
        saved: tuple[torch.Tensor, ...],
        i: torch.Tensor,
        j: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
        need_input_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`matscale.models.explicit_forces.layer_reverse` of this layer."""
        from matscale.models.explicit_forces import layer_reverse

        return layer_reverse(
            self, g_out, saved, i, j, radial, envelope, need_input_grad=need_input_grad
        )

    def _edge_terms(
        self,
        x: torch.Tensor,
        v: torch.Tensor | None,
        edge_index: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
        vectors: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor | None, ...], torch.Tensor]:
        """The edges' sums onto their centre atoms — messages Σ_j m_ij / K [N, H], coordinate
        shifts [N, 3] Å (or None), vector-feature updates [N, 3, C] (or None) — and the
        messages m [E, H] themselves."""
        i, j = edge_index
        m = self.edge(x, edge_index, radial) * envelope.unsqueeze(-1)  # [E, H]
        # in m's dtype: under bf16 autocast x may be bf16 while m (× the float32 envelope)
        # is float32, and the sum over neighbours is better accumulated in float32 anyway
        agg = scatter_sum(m, i, x.shape[0]) * self.inv_k  # [N, H]
        shift = None
        if self.coord is not None:
            weight = torch.tanh(self.coord(m)) * envelope.unsqueeze(-1)  # [E, 1]
            # x_i += Σ_j (x_i − x_j) φ_x(m_ij) / K, as the paper's E_GCL; x_i − x_j = −r_ij
            shift = scatter_sum(-vectors * weight, i, x.shape[0])
            shift = shift * self.inv_k
        dv = None
        if v is not None:
            c = self.vector_channels
            gate = self.vec_gate(m)  # [E, 2C]; m carries the envelope, and there is no bias
            unit = vectors / _norm3(vectors).unsqueeze(-1)  # [E, 3]
            # Σ_j g_ij r̂_ij + g'_ij v_j: directions to neighbours, and neighbours' vectors
            dv_ij = unit.unsqueeze(-1) * gate[:, None, :c] + gather_rows(v, j) * gate[:, None, c:]
            dv = scatter_sum(dv_ij, i, v.shape[0]) * self.inv_k  # [N, 3, C]
        return (agg, shift, dv), m


class Readout(nn.Module):
    """One head per data source: h_i → per-atom energy (in units of the source's scale)."""

    def __init__(self, cfg: EGNNConfig) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(
                _linear(cfg.width, cfg.readout_hidden),
                ACTIVATIONS[cfg.activation](),
                _linear(cfg.readout_hidden, 1),
            )
            for _ in cfg.heads
        )

    def forward(self, h: torch.Tensor, atom_source: torch.Tensor) -> torch.Tensor:
        """h: [N, H]; atom_source: [N] head index per atom → [N]."""
        # at least float32 out: under bf16 autocast the heads compute in bf16, but energies
        # are summed in float32 (and a float64 model stays float64)
        dtype = torch.promote_types(h.dtype, torch.float32)
        if len(self.heads) == 1:
            return self.heads[0](h).squeeze(-1).to(dtype)
        out = h.new_zeros(h.shape[0], dtype=dtype)
        for s, head in enumerate(self.heads):
            # every head runs, on no atoms if none of its source is in the batch, so that its
            # parameters always get a (zero) gradient: data-parallel and sharded backends then
            # reduce the same tensors on every process
            mask = atom_source == s
            out = out.index_put((mask,), head(h[mask]).squeeze(-1).to(dtype))
        return out


class EGNN(nn.Module):
    """AtomGraph → per-atom and total energies (and direct forces with ``force_head="direct"``).

    Buffers hold the data statistics the model needs at inference (saved with its weights):
    ``reference_energy`` [S, 119] eV per element and source, ``energy_scale`` [S] eV and
    ``force_scale`` [S] eV/Å per source. Set them with :func:`set_statistics`.
    """

    reference_energy: torch.Tensor
    energy_scale: torch.Tensor
    force_scale: torch.Tensor

    def __init__(self, cfg: EGNNConfig) -> None:
        super().__init__()
        self.config = cfg
        n_heads = len(cfg.heads)
        self.embedding = _UnitEmbedding(MAX_Z + 1, cfg.width)
        self.radial = BesselBasis(cfg.n_radial, cfg.cutoff)
        self.layers = nn.ModuleList(
            InteractionLayer(cfg, moves_coordinates=cfg.coord_update and k < cfg.depth - 1)
            for k in range(cfg.depth)
        )
        self.final_norm = _norm(cfg.norm, cfg.width)
        self.readout = Readout(cfg)
        self.force_head: nn.Module | None = None
        if cfg.force_head == "direct":
            self.force_head = nn.Sequential(
                _linear(cfg.width, cfg.width),
                ACTIVATIONS[cfg.activation](),
                _linear(cfg.width, 1, bias=False),
            )
        self.register_buffer(
            "reference_energy", torch.zeros(n_heads, MAX_Z + 1, dtype=torch.float64)
        )
        self.register_buffer("energy_scale", torch.ones(n_heads))
        self.register_buffer("force_scale", torch.ones(n_heads))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # .half(), .bfloat16() or .to(dtype) cast every floating buffer; the reference energies
        # must stay float64 (their sums reach 1e5 eV), so restore them from the original
        ref = self.reference_energy
        out = super()._apply(fn, recurse)
        self.reference_energy = ref.to(device=self.reference_energy.device, dtype=torch.float64)
        return out

    def forward(
        self, graph: AtomGraph, *, explicit_forces: bool = False, stress: bool = False
    ) -> dict[str, torch.Tensor]:
        """Returns ``energy`` [B] eV (float64), ``node_energy`` [N] eV (float64),
        ``energy_net`` [B] eV (float32: the learned part, what autograd differentiates) and,
        with a direct force head, ``forces`` [N, 3] eV/Å.

        ``explicit_forces``: also ``forces`` [N, 3] eV/Å (and with ``stress``, ``stress``
        [B, 6] eV/Å³) as −∂E/∂x written out (:mod:`matscale.models.explicit_forces`), through
        this forward pass so that data-parallel wrappers see the whole computation."""
        if explicit_forces:
            from matscale.models.explicit_forces import predict_explicit

            return predict_explicit(self, graph, stress=stress)
        cfg = self.config
        edge_index = graph.edge_index
        i, j = edge_index
        vectors0 = graph.edge_vectors()  # [E, 3] Å, float32, differentiable in positions/cell
        d0 = _norm3(vectors0)
        envelope = polynomial_envelope(d0, cfg.cutoff, cfg.envelope_p)  # [E]
        h = self.embedding(graph.numbers)  # [N, H]
        vectors, displacement = vectors0, None
        m: torch.Tensor | None = None
        v = h.new_zeros(h.shape[0], 3, cfg.vector_channels) if cfg.vector_channels else None
        for k, layer in enumerate(self.layers):
            radial = self.radial(_norm3(vectors)) * envelope.unsqueeze(-1)  # [E, n_radial]
            # only the direct force head reads messages: those of the last layer
            keep = self.force_head is not None and k == len(self.layers) - 1
            h, v, m, shift = layer(h, v, edge_index, radial, envelope, vectors, keep)
            if shift is not None:
                displacement = shift if displacement is None else displacement + shift
                moved = gather_rows(displacement, j) - gather_rows(displacement, i)
                vectors = vectors0 + moved
        h = self.final_norm(h)
        atom_source = graph.source[graph.batch]  # [N]
        net = self.readout(h, atom_source) * self.energy_scale[atom_source]  # [N] eV
        pair_forces = None
        if cfg.pair_repulsion:  # the direct head's forces are not −∂E/∂x: add the prior's
            pair, pair_forces = pair_prior(
                d0, vectors0, edge_index, graph.numbers, forces=self.force_head is not None
            )
            net = net + pair.to(net.dtype)
        out = self.energies(graph, net, atom_source)
        if self.force_head is not None:
            assert m is not None
            unit = vectors / _norm3(vectors).unsqueeze(-1)  # [E, 3]
            weight = self.force_head(m) * envelope.unsqueeze(-1)  # [E, 1]
            forces = scatter_sum(unit * weight, i, h.shape[0])
            forces = forces * (self.force_scale[atom_source] / cfg.avg_neighbours).unsqueeze(-1)
            out["forces"] = forces if pair_forces is None else forces + pair_forces.to(forces.dtype)
        return out

    def energies(
        self, graph: AtomGraph, net: torch.Tensor, atom_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The energies of ``forward`` from the learned per-atom energies ``net`` [N] eV and
        each atom's source [N]: ``energy`` [B] and ``node_energy`` [N] eV in float64 (the
        reference energies added), ``energy_net`` [B] eV in ``net``'s dtype."""
        ref = self.reference_energy[atom_source, graph.numbers]  # [N] eV, float64
        # summed in float64: a float32 sum over 10⁵ atoms of ~1 eV each is off by ~10 meV, and
        # the per-atom energies must sum to the energy whatever their order
        node_net = net.double()
        energy_net = sum_per_graph(node_net, graph.batch, graph.num_graphs)
        energy_ref = sum_per_graph(ref, graph.batch, graph.num_graphs)
        return {
            "energy": energy_net + energy_ref,
            "energy_net": energy_net.to(net.dtype),
            "node_energy": node_net + ref,
        }


#: Fields added to :class:`EGNNConfig` after models were first saved, with the value that
#: reproduces a model saved without them (an older file or checkpoint means what it meant).
LEGACY_DEFAULTS: dict[str, object] = {"pair_repulsion": False}


def upgrade_config(saved: dict[str, object]) -> dict[str, object]:
    """A saved model config (``to_dict`` of an :class:`EGNNConfig`) with every field added
    since filled with its legacy value."""
    return {**LEGACY_DEFAULTS, **saved}


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """a + b, where None stands for a term that is absent (zero)."""
    return b if a is None else a if b is None else a + b


def _norm3(v: torch.Tensor) -> torch.Tensor:
    """Length of [E, 3] vectors, with a floor that keeps the gradient finite at zero."""
    return torch.sqrt(torch.sum(v * v, dim=-1) + 1e-12)


def set_statistics(model: EGNN, stats: dict[str, dict]) -> None:
    """Fill the model's data-statistics buffers from a store's ``stats`` (per source, as
    written by ``matscale data pack``): reference energies, energy and force scales.

    The energy scale is the force RMS times 1 Å (as in MACE and NequIP): the network's
    per-atom output is O(1) at initialisation, and its gradient must reach forces of that
    size; the residual energy per atom after the reference energies is far smaller for
    near-equilibrium data and, used as the scale, leaves forces unlearnable. Without forces,
    the residual energy RMS per atom is used. The force scale (direct head) is the force RMS
    (eV/Å). Sources without statistics keep zeros and ones.
    """
    for s, name in enumerate(model.config.heads):
        st = stats.get(name)
        if not st:
            continue
        for z, e in st.get("reference_energy_eV", {}).items():
            model.reference_energy[s, int(z)] = float(e)
        per_atom = st.get("energy_residual_rms_eV", 0.0) / max(st.get("mean_atoms", 1.0), 1.0)
        force_rms = st.get("force_rms_eV_per_A", 0.0)
        if force_rms > 0:
            model.energy_scale[s] = force_rms  # eV/Å x 1 Å
            model.force_scale[s] = force_rms
        elif per_atom > 0:
            model.energy_scale[s] = per_atom
