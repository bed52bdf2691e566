"""Where a training step's time goes: matmuls, compiled (fused) kernels, other ops, the optimizer.

    .venv/bin/python benchmarks/step_profile.py --store data/store-default   # the machine alone

One process of 2 threads (``--threads``), the train_throughput model (width 128, depth 3,
conservative forces, batches of ``--max-atoms``), one of three force paths (``--forces``:
autograd's double backward, written out, written out and compiled). After 8 untimed steps
(compiling, when compiled) and 8 timed ones, ``torch.profiler`` records 8 more, with Inductor's C++
kernels named (``cpp.enable_kernel_profile``). Reported: seconds per step, and the shares of
the profiled CPU time (self time) taken by the matmuls (``aten::mm``/``addmm``/``bmm``), by
the compiled kernels (one per fused group of elementwise ops, gathers and scatter-adds over
edges), by the optimizer (AdamW, zeroing), and by the rest; the 25 most expensive ops.
What the share of the matmul peak in train_throughput.py leaves unsaid: how much of the step
is not matmul at all. The shares are also given as milliseconds per step (share × the timed
seconds per step), so that runs with ``--threads 1`` and ``2`` show which kinds of work a
second thread speeds up.

Writes ``benchmarks/results/<--out>.json`` (``step_profile_<forces>.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import step_model, store_batches, write_json

from matscale.config import TrainConfig
from matscale.data.store import Store
from matscale.parallel.plan import compile_forward
from matscale.train.step import make_optimizer, train_step

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")
OPTIMIZER = ("Optimizer.", "aten::lerp_", "aten::addcdiv_", "aten::_foreach")


def category(name: str) -> str:
    """The row's kind: matmul, compiled kernel, optimizer, or other."""
    if name in MATMULS:
        return "matmul"
    if "cpp_fused" in name:
        return "compiled kernels"
    if name.startswith(OPTIMIZER):
        return "optimizer"
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="data/store-default")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--max-atoms", type=int, default=512)
    p.add_argument("--forces", choices=("autograd", "explicit", "compiled"), default="compiled")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of the process")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch._inductor.config as inductor

    inductor.cpp.enable_kernel_profile = True  # each C++ kernel a named profiler row
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    model = step_model(store, args.width, args.depth)
    if args.forces == "compiled":
        compile_forward(model)
    t = TrainConfig()
    optimizer = make_optimizer(model, t)
    batches = store_batches(store, args.max_atoms, 24)

    def step(batch: object) -> None:
        train_step(model, [batch], optimizer, t, lr=1e-4, device=torch.device("cpu"),
                   explicit_forces=args.forces != "autograd")  # fmt: skip

    for b in batches[:8]:
        step(b)
    started = time.perf_counter()
    for b in batches[8:16]:
        step(b)
    seconds = (time.perf_counter() - started) / 8
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[16:]:
            step(b)
    rows = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
    total = sum(s for _, s in rows)
    shares: dict[str, float] = {}
    for name, s in rows:
        shares[category(name)] = shares.get(category(name), 0.0) + s / total
    top = sorted(rows, key=lambda r: -r[1])[:25]
    # milliseconds per step by kind: with --threads 1 and 2, how well each kind uses a
    # second thread (matmuls split well; Python, dispatch and small kernels less so)
    ms = {k: v * seconds * 1e3 for k, v in shares.items()}
    print(f"{args.forces}, {args.threads} thread(s): {seconds:.3f} s per step; "
          "shares of the profiled CPU time (ms per step):")  # fmt: skip
    for k, v in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"  {k:18s} {v:6.1%}  {ms[k]:6.1f}")
    for name, s in top:
        print(f"  {s / total:6.1%}  {name[:90]}")
    write_json(args.out or f"step_profile_{args.forces}", {
        "store": args.store, "width": args.width, "depth": args.depth,
        "max_atoms": args.max_atoms, "forces": args.forces, "threads": args.threads,
        "seconds_per_step": seconds, "shares": shares, "ms_per_step": ms,
        "top": [{"op": name, "share": s / total} for name, s in top],
    })  # fmt: skip


if __name__ == "__main__":
    main()
