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

Writes ``benchmarks/results/<--out>.json`` (``gemm_widths.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from train_throughput import matmul_peak_gflops


def gemm_gflops(edges: int, width: int, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of [E, H] × [H, H] (``edge``) and [H, E] × [E, H] (``weight_grad``), best of
    ``repeats`` after a warm-up, on the threads torch is set to."""
    a, w = torch.randn(edges, width), torch.randn(width, width)
    flops = 2.0 * edges * width * width
    rates = {}
    for name, product in (("edge", lambda: a @ w), ("weight_grad", lambda: a.t() @ a)):
        product()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t0)
        rates[name] = flops / best / 1e9
    return rates


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
    write_json(args.out, {"edges": args.edges, "threads": args.threads,
                          "matmul_peak_gflops": peak, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
