"""Forces and stress of the EGNN written out: its backward pass by hand, as plain tensor code.

With autograd, conservative forces are −∂E/∂x taken with ``create_graph=True``, and training
differentiates that graph again: a double backward, in which every activation on the
[E, H] edge tensors expands into a chain of generic elementwise kernels (SiLU's second
derivative alone is ~10 passes over the tensor), and which ``torch.compile`` cannot trace.
Here the first derivative is code: the forward pass keeps its pre-activations, and a
reverse sweep computes ∂E/∂h layer by layer, then ∂E/∂d per edge (through the radial basis,
the envelope and the pair prior) and the forces and virial from it. Training then needs
one ordinary backward through forward and reverse sweep together, which autograd does with
first-derivative formulas only and which ``torch.compile`` can fuse.

The layer it covers is the default and every shipped model's: no normalisation, no
coordinate channel, no vector channels, SiLU, conservative forces (``unsupported`` says why
not otherwise); residual
updates and the plain (unfactored) first edge linear are covered too. Results equal
``physics.predict``'s to float32 round-off (tests/models/test_explicit_forces.py).

Notation (per layer, edges e = (i, j), K the mean neighbour count; shapes in brackets):
    P = W_c h_i + W_n h_j + W_r R_e            [E, H]  pre-activation of the edge MLP
    M = silu(W_o silu(P) + b_o)                [E, H]  messages, times the envelope u_e
    a_i = Σ_j u_e M_e / K                      [N, H]
    h'_i = W_2 silu(W_1 [h_i, a_i] + b_1) + b_2
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from matscale.data.atomgraph import AtomGraph
from matscale.models.egnn import EGNN, EGNNConfig, InteractionLayer, _norm3
from matscale.models.narrow import linear_from_narrow, linear_to_narrow
from matscale.models.physics import stress_from_virial
from matscale.models.radial import polynomial_envelope, polynomial_envelope_derivative
from matscale.models.repulsion import pair_energy_and_derivative
from matscale.models.scatter import gather_rows, scatter_sum, sum_per_graph


class _SiluGrad(torch.autograd.Function):
    """g · silu'(x), with its own first derivatives: torch has none for ``silu_backward``, and
    training needs exactly these (the loss differentiates the forces once)."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, x)
        return torch.ops.aten.silu_backward(g, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, x = ctx.saved_tensors
        s = torch.sigmoid(x)
        # silu' = s (1 + x (1 − s)); silu'' = s (1 − s) (2 + x (1 − 2 s))
        return torch.ops.aten.silu_backward(grad, x), grad * g * s * (1 - s) * (2 + x * (1 - 2 * s))


def _silu_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g · silu'(x), elementwise, differentiable once in g and x."""
    return cast(torch.Tensor, _SiluGrad.apply(g, x))


def unsupported(cfg: EGNNConfig) -> str | None:
    """Why ``cfg``'s forces cannot be written out here (None: they can)."""
    if cfg.force_head != "conservative":
        return "a direct force head has no −∂E/∂x to write out"
    if cfg.activation != "silu":
        return f"activation {cfg.activation} (written out: silu)"
    if cfg.norm != "none":
        return f"norm {cfg.norm} (written out: none)"
    if cfg.coord_update:
        return "the coordinate channel"
    if cfg.vector_channels:
        return "vector channels"
    return None


def predict_explicit(
    model: EGNN, graph: AtomGraph, *, forces: bool = True, stress: bool = False
) -> dict[str, torch.Tensor]:
    """What :func:`matscale.models.physics.predict` returns — ``energy`` [B] eV (float64),
    ``energy_net`` [B] eV, ``node_energy`` [N] eV, ``forces`` [N, 3] eV/Å and, with
    ``stress``, ``stress`` [B, 6] eV/Å³ (Voigt xx yy zz yz xz xy) — with the first derivative
    written out. Differentiable in the parameters (training needs no ``create_graph``)."""
    cfg = model.config
    why = unsupported(cfg)
    if why:
        raise ValueError(f"forces cannot be written out for this model: {why}")
    i, j = graph.edge_index
    vectors = graph.edge_vectors().detach()  # [E, 3] Å; the geometry is data here
    d = _norm3(vectors)  # [E] Å
    envelope = polynomial_envelope(d, cfg.cutoff, cfg.envelope_p)  # [E]
    basis = model.radial(d)  # [E, n_radial]
    radial = basis * envelope.unsqueeze(-1)
    h = model.embedding(graph.numbers)  # [N, H]
    saved = []
    layers = [cast(InteractionLayer, layer) for layer in model.layers]
    for layer in layers:
        h, kept = layer.explicit_forward(h, i, j, radial, envelope)
        saved.append(kept)
    atom_source = graph.source[graph.batch]  # [N]
    scale = model.energy_scale[atom_source]  # [N] eV
    heads = [_linears(head) for head in model.readout.heads]
    # every head on every atom, then each atom's own: shapes that do not depend on the data
    # (what torch.compile needs), for a cost of [N, H] work per head against [E, H] per layer
    hidden = [first(h) for first, _ in heads]  # [N, R] each
    per_head = torch.stack(
        [second(F.silu(z)).squeeze(-1) for z, (_, second) in zip(hidden, heads, strict=True)]
    )  # [S, N]
    # energies summed in float32 at least, as the readout does under bf16 autocast
    per_head = per_head.to(torch.promote_types(per_head.dtype, torch.float32))
    own = atom_source.unsqueeze(0)  # [1, N]
    net = per_head.gather(0, own).squeeze(0) * scale  # [N] eV
    dpsi = d.new_zeros(d.shape)
    if cfg.pair_repulsion:  # on every edge: ψ and ψ' are exactly zero beyond the switch
        psi, dpsi = pair_energy_and_derivative(d, graph.numbers[i], graph.numbers[j])
        net = net + scatter_sum(0.5 * psi.to(net.dtype), i, net.shape[0])
    out = model.energies(graph, net, atom_source)
    if not (forces or stress):
        return out
    # the reverse sweep: ∂E/∂h after the last layer, then layer by layer down to the first
    # ∂(readout_s(h_i))/∂h_i [N, H], each atom through its own source's head
    g_head = torch.stack(
        [_silu_grad(second.weight.expand_as(z), z) @ first.weight
         for z, (first, second) in zip(hidden, heads, strict=True)]
    )  # [S, N, H]  # fmt: skip
    g_h = g_head.gather(0, own.unsqueeze(-1).expand(1, *h.shape)).squeeze(0) * scale.unsqueeze(-1)
    g_radial = radial.new_zeros(radial.shape)
    g_env = envelope.new_zeros(envelope.shape)
    for k in range(len(layers) - 1, -1, -1):
        g_h, g_r, g_e = layers[k].explicit_reverse(g_h, saved[k], i, j, radial, envelope, k > 0)
        g_radial = g_radial + g_r
        g_env = g_env + g_e
    # radial = B(d) u(d): through both factors to d
    g_env = g_env + (g_radial * basis).sum(dim=1)
    g_d = (g_radial * envelope.unsqueeze(-1) * _bessel_derivative(model, d)).sum(dim=1)
    g_d = g_d + g_env * polynomial_envelope_derivative(d, cfg.cutoff, cfg.envelope_p)
    g_d = g_d + 0.5 * dpsi.to(g_d.dtype)  # ½ ψ(d) on each end of a directed edge
    g_vec = g_d.unsqueeze(-1) * vectors / d.unsqueeze(-1)  # [E, 3] = ∂E/∂r_ij
    # r_ij = x_j − x_i + offsets: −∂E/∂x_i = Σ_(i,j) ∂E/∂r_ij − Σ_(j,i) ∂E/∂r_ji
    n = graph.numbers.shape[0]
    out["forces"] = scatter_sum(g_vec, i, n) - scatter_sum(g_vec, j, n)
    if stress:
        out["stress"] = _stress(graph, vectors, g_vec, i)
    return out


def layer_forward(
    layer: InteractionLayer,
    h: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    radial: torch.Tensor,
    envelope: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The layer's update of h [N, H] and what its reverse sweep needs: h, P, W_o silu(P) + b_o,
    M [E, H] and the node MLP's pre-activation [N, H]."""
    edge = layer.edge
    if edge.factored:
        pre = gather_rows(edge.w_centre(h), i) + gather_rows(edge.w_neighbour(h), j)
        pre = pre + linear_from_narrow(radial, edge.w_radial.weight)
    else:
        weight = torch.cat([edge.w_centre.weight, edge.w_neighbour.weight, edge.w_radial.weight], 1)
        edges = torch.cat([gather_rows(h, i), gather_rows(h, j), radial], dim=1)
        pre = F.linear(edges, weight, edge.w_centre.bias)
    z = edge.out(F.silu(pre))
    m = F.silu(z)
    # in the product's dtype: under bf16 autocast m is bf16 and the envelope float32 (the sum
    # over neighbours is better accumulated in float32 anyway)
    weighted = m * envelope.unsqueeze(-1)
    agg = scatter_sum(weighted, i, h.shape[0])
    first, second = _linears(layer.node)
    u = first(torch.cat([h, agg * layer.inv_k], dim=-1))
    update = second(F.silu(u))
    return (h + update if layer.residual else update), (h, pre, z, m, u)


def layer_reverse(
    layer: InteractionLayer,
    g_out: torch.Tensor,
    saved: tuple[torch.Tensor, ...],
    i: torch.Tensor,
    j: torch.Tensor,
    radial: torch.Tensor,
    envelope: torch.Tensor,
    *,
    need_input_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From ∂E/∂h' [N, H] of the layer's output: ∂E/∂h [N, H] of its input (zeros of no use
    for the first layer, whose input is the embedding), ∂E/∂R [E, n_radial] and ∂E/∂u [E]."""
    h, pre, z, m, u = saved
    width = h.shape[1]
    edge = layer.edge
    first, second = _linears(layer.node)
    g_in = _silu_grad(g_out @ second.weight, u) @ first.weight  # [N, 2H]: ∂E/∂[h, a]
    g_msg = gather_rows(g_in[:, width:] * layer.inv_k, i)  # [E, H]: ∂E/∂(u M) per edge
    g_env = (g_msg * m).sum(dim=1)  # [E]
    g_pre = _silu_grad(_silu_grad(g_msg * envelope.unsqueeze(-1), z) @ edge.out.weight, pre)
    g_radial = linear_to_narrow(g_pre, edge.w_radial.weight)  # [E, n_radial]
    if not need_input_grad:
        return g_out.new_zeros(0), g_radial, g_env
    g_centre = scatter_sum(g_pre, i, h.shape[0])
    g_neighbour = scatter_sum(g_pre, j, h.shape[0])
    g_h = g_in[:, :width] + g_centre @ edge.w_centre.weight + g_neighbour @ edge.w_neighbour.weight
    return (g_h + g_out if layer.residual else g_h), g_radial, g_env


def _linears(mlp: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The two linears of a Linear → activation → Linear block."""
    first, second = cast(nn.Sequential, mlp)[0], cast(nn.Sequential, mlp)[2]
    return cast(nn.Linear, first), cast(nn.Linear, second)


def _bessel_derivative(model: EGNN, d: torch.Tensor) -> torch.Tensor:
    """∂B_n/∂d [E, n_radial] (1/Å²) of the Bessel basis sqrt(2/c) sin(f_n d) / d."""
    f = model.radial.frequencies
    dd = d.unsqueeze(-1)
    return model.radial.prefactor * (f * torch.cos(f * dd) * dd - torch.sin(f * dd)) / dd**2


def _stress(
    graph: AtomGraph, vectors: torch.Tensor, g_vec: torch.Tensor, i: torch.Tensor
) -> torch.Tensor:
    """σ = (1/V) ∂E/∂ε [B, 6] eV/Å³ (Voigt): under x' = x (I + ε) every edge vector becomes
    r (I + ε), so ∂E/∂ε_ab = Σ_edges r_a ∂E/∂r_b, symmetrised (``physics.stress_from_virial``
    does the rest)."""
    per_edge = vectors.unsqueeze(-1) * g_vec.unsqueeze(-2)  # [E, 3, 3]
    virial = sum_per_graph(per_edge, graph.batch[i], graph.num_graphs)
    return stress_from_virial(0.5 * (virial + virial.transpose(1, 2)), graph)
