"""How fast this CPU runs the EGNN's edge matmuls at each width: the share of the fp32 matmul
peak that a width allows before any of matscale's own work.

    .venv/bin/python benchmarks/gemm_widths.py                 # the machine alone
    .venv/bin/python benchmarks/gemm_widths.py --widths 78 80 128 --edges 16000

Per width H, on ``--threads`` threads, the two products every edge MLP layer runs in a
training step (``--edges`` E, ~30 neighbours per atom of a 512-atom batch): [E, H] × [H, H]
(forward, the written-out reverse sweep, input gradients) and [H, E] × [E, H] (weight
gradients), each the best of ``--repeats`` timings; GFLOP/s and the share of the peak
(2048 × 2048, ``train_throughput.matmul_peak_gflops``) measured in the same run. A width the
GEMM library handles badly caps the step's share of the peak whatever the rest of the step
does (README: the demo's width 78).

And the radial basis's products, [E, 8] → [E, H] and back, forward and backward, as autograd
orients them and as ``models/narrow.py`` does (``narrow_seconds``): the seconds of each, one
after the other in the same process, and their ratio.

Writes ``benchmarks/results/<--out>.json`` (``gemm_widths.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from train_throughput import matmul_peak_gflops

from matscale.models.narrow import linear_from_narrow, linear_to_narrow


def gemm_gflops(edges: int, width: int, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of [E, H] × [H, H] (``edge``) and [H, E] × [E, H] (``weight_grad``), best of
    ``repeats`` after a warm-up, on the threads torch is set to."""
    a, w = torch.randn(edges, width), torch.randn(width, width)
    flops = 2.0 * edges * width * width
    products = (("edge", lambda: a @ w), ("weight_grad", lambda: a.t() @ a))
    return {name: flops / _best_seconds(product, repeats) / 1e9 for name, product in products}


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def narrow_seconds(edges: int, width: int, n_radial: int = 8, repeats: int = 20) -> dict:
    """Seconds (best of ``repeats``) of the radial basis's two products, forward and backward
    (input and weight gradients), each as autograd runs them (``F.linear(R, W)`` and
    ``g @ W``) and as ``models/narrow.py`` does (``linear_from_narrow``, ``linear_to_narrow``),
    timed one after the other in the same process: R [E, n_radial], g [E, H], W [H, n_radial]."""
    radial = torch.randn(edges, n_radial, requires_grad=True)
    wide = torch.randn(edges, width, requires_grad=True)
    weight = torch.randn(width, n_radial, requires_grad=True)
    g_wide, g_narrow = torch.randn(edges, width), torch.randn(edges, n_radial)
    runs = {
        "from_narrow_autograd": lambda: F.linear(radial, weight).backward(g_wide),
        "from_narrow_ours": lambda: linear_from_narrow(radial, weight).backward(g_wide),
        "to_narrow_autograd": lambda: (wide @ weight).backward(g_narrow),
        "to_narrow_ours": lambda: linear_to_narrow(wide, weight).backward(g_narrow),
    }
    return {name: _best_seconds(run, repeats) for name, run in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 78, 80, 96, 128, 256, 512])
    p.add_argument("--edges", type=int, default=16000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="gemm_widths", help="results name under results/")
    args = p.parse_args()
    peak = matmul_peak_gflops(args.threads)  # sets the threads too
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s ({args.threads} threads); E = {args.edges:,}")
    rows = []
    for width in args.widths:
        rates = gemm_gflops(args.edges, width, args.repeats)
        rows.append({"width": width, **{f"{k}_gflops": v for k, v in rates.items()},
                     **{f"{k}_share_of_peak": v / peak for k, v in rates.items()}})  # fmt: skip
        edge, grad = rates["edge"], rates["weight_grad"]
        print(f"width {width:>5}: [E, H] x [H, H] {edge:6.1f} GFLOP/s ({100 * edge / peak:3.0f}% "
              f"of peak), [H, E] x [E, H] {grad:6.1f} ({100 * grad / peak:3.0f}%)")  # fmt: skip
        narrow = narrow_seconds(args.edges, width, repeats=args.repeats)
        rows[-1]["radial_products_s"] = narrow
        for side in ("from_narrow", "to_narrow"):
            plain, ours = narrow[f"{side}_autograd"], narrow[f"{side}_ours"]
            rows[-1][f"{side}_speedup"] = plain / ours
            print(f"              radial {side:11s}: autograd {1e3 * plain:6.2f} ms, "
                  f"models/narrow.py {1e3 * ours:6.2f} ms ({plain / ours:.2f}x)")  # fmt: skip
    write_json(args.out, {"edges": args.edges, "threads": args.threads,
                          "matmul_peak_gflops": peak, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
