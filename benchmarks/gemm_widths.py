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
does (README: 78, the demo's width until docs/peers.md's round 6 moved it to 80).

And the radial basis's products, [E, 8] → [E, H] and back, forward and backward, as autograd
orients them and as ``models/narrow.py`` does (``narrow_seconds``): the seconds of each, one
after the other in the same process, and their ratio. With ``--store``, what that does to a
training step (written-out forces, eager and compiled, at each ``--step-models``): rounds of
20 steps with the products each way, alternated in one process, medians compared:

    .venv/bin/python benchmarks/gemm_widths.py --widths 78 128 --store data/store-default

Writes ``benchmarks/results/<--out>.json`` (``gemm_widths.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from train_throughput import matmul_peak_gflops

from matscale.models import explicit_forces
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


@contextlib.contextmanager
def radial_products(kind: str) -> Iterator[None]:
    """The written-out forces' radial products as ``kind``: ``"ours"`` (``models/narrow.py``)
    or ``"autograd"`` (``F.linear`` and ``g @ W``, as before it); restored on exit."""
    saved = explicit_forces.linear_from_narrow, explicit_forces.linear_to_narrow
    if kind == "autograd":
        explicit_forces.linear_from_narrow = F.linear
        explicit_forces.linear_to_narrow = torch.matmul
    try:
        yield
    finally:
        explicit_forces.linear_from_narrow, explicit_forces.linear_to_narrow = saved


def step_seconds_both_ways(
    store: Path, width: int, depth: int, *, compiled: bool, rounds: int = 6, steps: int = 20
) -> dict[str, list[float]]:
    """Seconds of ``steps`` training steps (written-out conservative forces, ≤ 512-atom batches
    of ``store``) with the radial products each way, alternated ``rounds`` times in one process
    (each way first in every other round), so that the machine's drift falls on both alike;
    compiled, each way is compiled once before the timing."""
    from common import step_model, store_batches

    from matscale.config import TrainConfig
    from matscale.data.store import Store
    from matscale.parallel.plan import compile_forward
    from matscale.train.step import make_optimizer, train_step

    data = Store(store)
    model = step_model(data, width, depth)
    if compiled:
        compile_forward(model)
    config = TrainConfig()
    optimizer = make_optimizer(model, config)
    batches = store_batches(data, 512, steps)

    def run(batch_list: list) -> None:
        for batch in batch_list:
            train_step(model, [batch], optimizer, config, lr=1e-6, device=torch.device("cpu"),
                       explicit_forces=True)  # fmt: skip

    ways = ["autograd", "ours"]
    for way in ways:  # warm-up (and compilation: the swapped functions are guarded on)
        with radial_products(way):
            run(batches[:4])
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for r in range(rounds):
        for way in ways if r % 2 == 0 else ways[::-1]:
            with radial_products(way):
                started = time.perf_counter()
                run(batches)
                seconds[way].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 78, 80, 96, 128, 256, 512])
    p.add_argument("--edges", type=int, default=16000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="also time training steps with the radial products each way (a store)",
    )
    p.add_argument(
        "--step-models",
        type=lambda t: tuple(map(int, t.split("x"))),
        nargs="+",
        default=[(78, 2), (128, 3)],
        help="WIDTHxDEPTH of those steps' models",
    )
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
    steps = []
    for width, depth in args.step_models if args.store else []:
        for compiled in (False, True):
            seconds = step_seconds_both_ways(args.store, width, depth, compiled=compiled)
            ratio = statistics.median(seconds["autograd"]) / statistics.median(seconds["ours"])
            steps.append({"width": width, "depth": depth, "compiled": compiled,
                          "seconds_per_20_steps": seconds, "speedup_of_ours": ratio})  # fmt: skip
            print(f"written-out step, width {width}, depth {depth}, "
                  f"{'compiled' if compiled else 'eager'}: models/narrow.py {ratio:.3f}x the "
                  f"autograd-oriented products (medians of {len(seconds['ours'])} alternated "
                  "rounds of 20 steps)")  # fmt: skip
    write_json(args.out, {"edges": args.edges, "threads": args.threads,
                          "matmul_peak_gflops": peak, "rows": rows, "steps": steps})  # fmt: skip


if __name__ == "__main__":
    main()
