"""Rows gathered onto edges and edge rows summed onto atoms: the two index operations of a
message-passing layer, written once, in the forms that run fastest on CPU eager and compiled.

``gather_rows(x, i)`` is ``x[i]`` and ``scatter_sum(src, i, n)`` is
``zeros(n, ...).index_add(0, i, src)``; each is the other's derivative. They are written with
``torch.gather`` and ``Tensor.scatter_add`` (an index expanded over the feature dimension, no
copy) because of what the alternatives cost on CPU (torch 2.13; ``benchmarks/step_profile.py``):

- ``x[i]`` is advanced indexing, whose derivative is ``index_put_(accumulate=True)``: a
  sort-based kernel in eager mode, ~10x slower than a scatter-add on [E, H] tensors.
- ``index_add`` in a ``torch.compile``d graph becomes Inductor C++ code with one atomic
  add per element, ~3.5 ns each on [E, H]; ``scatter_add`` (sum) is handed to ATen's
  kernel instead (Inductor's ``cpp.fallback_scatter_reduce_sum``, on by default because the
  atomics are slower), which adds rows without atomics — when the process runs more than one
  thread; with one, Inductor keeps its own scatter (README: compiled DDP of 2 × 1 thread).

Gradients flow through both, to any order (the derivative of a gather is a scatter-add and
back), so the same functions serve autograd's double backward and the written-out forces.
"""

from __future__ import annotations

import torch


def _expanded(index: torch.Tensor, row: torch.Size) -> torch.Tensor:
    """``index`` [E] as [E, *row]: a view, one index per row."""
    return index.view(-1, *([1] * len(row))).expand(index.shape[0], *row)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[index]``: rows of ``x`` [N, ...] at ``index`` [E] (int64) → [E, ...]."""
    return x.gather(0, _expanded(index, x.shape[1:]))


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Rows of ``src`` [E, ...] summed into row ``index[e]`` of a zero [n, ...] tensor (the
    sum over each atom's edges), in ``src``'s dtype."""
    return src.new_zeros(n, *src.shape[1:]).scatter_add(0, _expanded(index, src.shape[1:]), src)


def sum_per_graph(values: torch.Tensor, graph_of: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Sums of ``values`` [M, ...] per graph [n_graphs, ...]; ``graph_of`` [M] the graph of
    each row. One graph is a plain sum: ``torch.compile`` specialises a size of 1, and its C++
    code generation for a scatter into one element fails (torch 2.13, CPU: an assertion in
    Inductor's vectorised store)."""
    if n_graphs == 1:
        return values.sum(dim=0, keepdim=True)
    return scatter_sum(values, graph_of, n_graphs)
