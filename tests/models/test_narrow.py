"""The products with a narrow side (the radial basis): the plain products they replace, to any
order of derivative, under autocast and compiled (in the model: the written-out forces,
tests/models/test_explicit_forces.py)."""

from __future__ import annotations

import torch

from matscale.models.narrow import linear_from_narrow, linear_to_narrow


def _operands(e: int = 23, h: int = 7, r: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(e, r, dtype=torch.float64, generator=g, requires_grad=True)
    wide = torch.randn(e, h, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(h, r, dtype=torch.float64, generator=g, requires_grad=True)
    return x, wide, weight


def test_values_and_gradients_equal_the_plain_products() -> None:
    x, wide, weight = _operands()
    for ours, plain, first in (
        (linear_from_narrow, lambda a, w: a @ w.t(), x),
        (linear_to_narrow, lambda a, w: a @ w, wide),
    ):
        out, ref = ours(first, weight), plain(first, weight)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        seed = torch.randn_like(ref)
        got = torch.autograd.grad(out, (first, weight), seed)
        want = torch.autograd.grad(ref, (first, weight), seed)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_first_and_second_derivatives() -> None:
    x, wide, weight = _operands()

    def f(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # squared: second derivatives that are not zero, in every argument
        return linear_from_narrow(a, w) ** 2, linear_to_narrow(b, w) ** 2

    assert torch.autograd.gradcheck(f, (x, wide, weight))
    assert torch.autograd.gradgradcheck(f, (x, wide, weight))


def test_autocast_gradients_keep_their_inputs_dtypes() -> None:
    x = torch.randn(50, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear_from_narrow(x, weight)
        back = linear_to_narrow(y, weight)
    assert y.dtype == torch.bfloat16 and back.dtype == torch.bfloat16
    g_x, g_w = torch.autograd.grad(back.float().square().sum(), (x, weight))
    assert g_x.dtype == torch.float32 and g_w.dtype == torch.float32
    refs = torch.autograd.grad((x @ weight.t() @ weight).square().sum(), (x, weight))
    for got, ref in zip((g_x, g_w), refs, strict=True):  # bf16 products: a few parts in 100
        torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_compiled_with_dynamic_sizes_equals_eager() -> None:
    # float64: the compiled kernels sum in another order, and float32 would differ by ~1e-5
    weight = torch.randn(16, 8, dtype=torch.float64, requires_grad=True)

    def f(x: torch.Tensor) -> torch.Tensor:
        return linear_to_narrow(torch.tanh(linear_from_narrow(x, weight)), weight)

    compiled = torch.compile(f, dynamic=True)
    for e in (40, 57, 91):  # different edge counts, one graph
        x = torch.randn(e, 8, dtype=torch.float64, requires_grad=True)
        out, ref = compiled(x), f(x)
        torch.testing.assert_close(out, ref)
        seed = torch.randn_like(ref)
        got = torch.autograd.grad(out, (x, weight), seed)
        want = torch.autograd.grad(ref, (x, weight), seed)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
