"""The edge gathers and scatter-sums: the index operations they replace, to any order of
derivative, eager and compiled."""

from __future__ import annotations

import torch

from matscale.models.scatter import gather_rows, scatter_sum


def _edges(n: int = 6, e: int = 17, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (e,), generator=g)


def test_gather_and_scatter_equal_indexing_and_index_add() -> None:
    index = _edges()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    src = torch.randn(17, 3, 4, dtype=torch.float64)
    assert torch.equal(gather_rows(x, index), x[index])
    expected = torch.zeros(6, 3, 4, dtype=torch.float64).index_add(0, index, src)
    torch.testing.assert_close(scatter_sum(src, index, 6), expected)
    # an atom with no edge gets zeros, and the result keeps the source's dtype
    lonely = scatter_sum(src[:, 0, 0].float(), index, 9)
    assert lonely.dtype == torch.float32 and torch.all(lonely[6:] == 0)


def test_first_and_second_derivatives() -> None:
    index = _edges()
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    src = torch.randn(17, 5, dtype=torch.float64, requires_grad=True)

    def f(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # squared: a second derivative that is not zero
        return gather_rows(a, index) ** 2, scatter_sum(b, index, 6) ** 2

    assert torch.autograd.gradcheck(f, (x, src))
    assert torch.autograd.gradgradcheck(f, (x, src))


def test_compiled_equals_eager() -> None:
    index = _edges(n=40, e=300)
    x = torch.randn(40, 16, requires_grad=True)

    def layer(h: torch.Tensor) -> torch.Tensor:
        return scatter_sum(torch.nn.functional.silu(gather_rows(h, index)), index, h.shape[0])

    eager = layer(x)
    (g_eager,) = torch.autograd.grad(eager.square().sum(), x)
    compiled = torch.compile(layer, dynamic=False)(x)
    (g_compiled,) = torch.autograd.grad(compiled.square().sum(), x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(g_compiled, g_eager)
