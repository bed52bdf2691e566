"""Products with one narrow side: the radial basis R [E, n_radial] (n_radial ≈ 8) projected to
the width H, and the reverse, in the orientation the CPU GEMM library runs fast.

``linear_from_narrow(x, w)`` is ``x @ w.T`` ([E, R] → [E, H]) and ``linear_to_narrow(g, w)`` is
``g @ w`` ([E, H] → [E, R]), with ``w`` [H, R] an ``nn.Linear(R, H)`` weight; each is the
other's derivative with respect to its first argument. Written by hand because of what autograd
does with them on CPU (torch 2.13, MKL; ``benchmarks/gemm_widths.py``): its backward of
``F.linear`` computes the weight gradient as [H, E] × [E, R] → [H, R], and a product with an
output only R = 8 columns wide runs at ~10 % of the matmul peak (1.2 ms for E = 20,000, H =
80); the same numbers computed as [R, E] × [E, H] → [R, H], transposed, take 0.27 ms. Likewise
``g @ w`` (~14 % of the peak) runs ~2x faster as (wᵀ gᵀ)ᵀ. Autograd's ``mm`` backward keeps the
layout of its inputs, so writing the forward differently does not reach these forms: the
backward has to be written out. At width 80 the narrow products were 16 % of a compiled
training step for 10 % of its matmul FLOPs.

Used by the written-out forces (``models/explicit_forces.py``), whose training step is one
ordinary backward that needs every gradient. Not by autograd's path: there the forces are a
first backward that needs only ∂/∂positions, and autograd's engine skips a built-in op's weight
gradient then, where a custom Function's backward cannot tell (``ctx.needs_input_grad`` says
only what required gradients in the forward) and would compute it for nothing.

Both stay differentiable to any order (the backward is made of the same two functions and plain
``mm``: tests/models/test_narrow.py); under autocast the backward computes in the gradient's
dtype and returns each gradient in its input's dtype.
"""

from __future__ import annotations

from typing import Any

import torch


def linear_from_narrow(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T``: x [E, R] (R small), weight [H, R] → [E, H]."""
    return _FromNarrow.apply(x, weight)


def linear_to_narrow(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g @ weight``: g [E, H], weight [H, R] (R small) → [E, R]."""
    return _ToNarrow.apply(g, weight)


def _weight_grad(wide: torch.Tensor, narrow: torch.Tensor) -> torch.Tensor:
    """``wide.T @ narrow`` [H, R] for wide [E, H] and narrow [E, R], computed as the transpose
    of [R, E] × [E, H]: the fast orientation."""
    return (narrow.t() @ wide).t()


class _Product(torch.autograd.Function):
    """What both products keep for their backward: their two inputs."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: Any) -> None:
        ctx.save_for_backward(*inputs)


class _FromNarrow(_Product):
    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        g_x = g_w = None
        if ctx.needs_input_grad[0]:
            g_x = linear_to_narrow(g, weight.to(g.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            g_w = _weight_grad(g, x.to(g.dtype)).to(weight.dtype)
        return g_x, g_w


class _ToNarrow(_Product):
    @staticmethod
    def forward(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # [R, H] × [H, E], transposed: ~2x faster than [E, H] × [H, R]. Made contiguous (a
        # copy of E × R numbers): a transposed output's strides depend on E, which a graph
        # compiled with dynamic shapes does not allow for in the gradients it is handed (an
        # Inductor stride assertion: tests/models/test_explicit_forces.py, compiled forces
        # across batch sizes)
        return (weight.t() @ g.t()).t().contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        g, weight = ctx.saved_tensors
        g_g = g_w = None
        if ctx.needs_input_grad[0]:
            g_g = linear_from_narrow(grad, weight.to(grad.dtype)).to(g.dtype)
        if ctx.needs_input_grad[1]:
            g_w = _weight_grad(g.to(grad.dtype), grad).to(weight.dtype)
        return g_g, g_w
