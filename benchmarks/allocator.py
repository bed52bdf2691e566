"""What keeping freed memory (``matscale.allocator.keep_freed_memory``, which the ``matscale``
command, ``load_potential`` and training apply) is worth: the same work in fresh processes with
glibc's own settings and with ours, alternated.

    .venv/bin/python benchmarks/allocator.py --store data/store-default \\
        --model data/runs/demo/model.pt --head emt-metals          # the machine alone

Cases, each a fresh process of this script (``--worker``) with ``MATSCALE_KEEP_FREED_MEMORY``
``0`` (glibc's settings) or unset (ours), ``--rounds`` times each, one setting after the
other so that the machine's drift hits both alike:

- ``train-W-D``: the training step the step benchmarks time (``common.step_model``, width W,
  depth D, batches of ≤ ``--max-atoms`` atoms of the store, forces written out and compiled,
  one process of ``--threads`` threads): seconds per step (median of the timed steps after
  ``--warmup``), minor page faults per step, the process's peak resident memory, and the
  step's share of the fp32 matmul peak (FLOPs counted as train_throughput.py counts them;
  peak measured once in the parent).
- ``calc-N``: ``MatscaleCalculator`` force and stress calls on N atoms of rattled fcc Cu with
  ``--model`` (eager): seconds and page faults per call.

Reported per case: the medians over rounds of each setting and their ratio (glibc's time over
ours: > 1 means ours is faster). Writes ``benchmarks/results/<--out>.json``
(``allocator.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import KEEPS_FREED_MEMORY, step_model, store_batches, write_json

from matscale.allocator import ENV_SWITCH
from matscale.train.log import peak_resident_mib

RESULT = "RESULT "
ROOT = Path(__file__).resolve().parent.parent


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def train_worker(store_path: str, width: int, depth: int, args: argparse.Namespace) -> dict:
    """Seconds and page faults per compiled, written-out training step (median)."""
    from matscale.config import TrainConfig
    from matscale.data.store import Store
    from matscale.parallel.plan import compile_forward
    from matscale.train.step import make_optimizer, train_step

    store = Store(store_path)
    model = step_model(store, width, depth)
    compile_forward(model)
    t = TrainConfig()
    optimizer = make_optimizer(model, t)
    batches = store_batches(store, args.max_atoms, args.warmup + args.steps)
    seconds, faults = [], []
    for k, b in enumerate(batches):
        f0, t0 = _faults(), time.perf_counter()
        train_step(model, [b], optimizer, t, lr=1e-4, device=torch.device("cpu"),
                   explicit_forces=True)  # fmt: skip
        if k >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            faults.append(_faults() - f0)
    atoms = sum(len(b.numbers) for b in batches[args.warmup :]) / args.steps
    return {"seconds": statistics.median(seconds), "faults": statistics.median(faults),
            "atoms_per_step": atoms, "peak_rss_mib": peak_resident_mib()}  # fmt: skip


def calc_worker(model: str, head: str, atoms_wanted: int, args: argparse.Namespace) -> dict:
    """Seconds and page faults per force-and-stress call of the ASE calculator (median)."""
    from ase.build import bulk

    from matscale.calc.ase_calculator import MatscaleCalculator

    side = round((atoms_wanted / 4) ** (1 / 3))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((side, side, side))
    atoms.rattle(0.05, seed=1)
    atoms.calc = MatscaleCalculator.from_file(model, head=head)
    seconds, faults = [], []
    for k in range(args.warmup + args.steps):
        atoms.positions[k % len(atoms), 0] += 0.01  # a new geometry: no cached result
        f0, t0 = _faults(), time.perf_counter()
        atoms.get_forces()
        atoms.get_stress()
        if k >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            faults.append(_faults() - f0)
    return {"seconds": statistics.median(seconds), "faults": statistics.median(faults),
            "atoms": len(atoms), "peak_rss_mib": peak_resident_mib()}  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    kind, *sizes = args.worker.split("-")
    if kind == "train":
        row = train_worker(str(args.store), int(sizes[0]), int(sizes[1]), args)
    else:
        row = calc_worker(str(args.model), args.head, int(sizes[0]), args)
    print(RESULT + json.dumps({**row, "keeps_freed_memory": KEEPS_FREED_MEMORY}))


def run_case(case: str, keep: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh worker process of ``case`` with our setting (``keep``) or glibc's."""
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH and not k.startswith("MALLOC_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    if not keep:
        env[ENV_SWITCH] = "0"
    cmd = [sys.executable, __file__, "--worker", case, "--store", str(args.store),
           "--model", str(args.model), "--head", args.head, "--threads", str(args.threads),
           "--max-atoms", str(args.max_atoms), "--warmup", str(args.warmup),
           "--steps", str(args.steps)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            row = json.loads(line[len(RESULT) :])
            if row["keeps_freed_memory"] != keep:
                raise RuntimeError(f"{case}: the worker's setting is not the one asked for")
            return row
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"{case} worker failed (exit {proc.returncode}): " + " | ".join(tail))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("data/store-default"))
    p.add_argument("--model", type=Path, default=Path("data/runs/demo/model.pt"))
    p.add_argument("--head", default="emt-metals")
    p.add_argument("--cases", nargs="+", default=["train-78-2", "train-128-3", "calc-500"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-atoms", type=int, default=512)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--out", default="allocator")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    from train_throughput import matmul_peak_gflops
    from train_throughput import step_flops_per_atom as flops_per_atom

    from matscale.data.store import Store

    peak = matmul_peak_gflops(args.threads)
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s on {args.threads} threads")
    results: dict[str, Any] = {}
    for case in args.cases:
        rows: dict[str, list[dict[str, Any]]] = {"glibc": [], "kept": []}
        for _ in range(args.rounds):
            for name, keep in (("glibc", False), ("kept", True)):
                rows[name].append(run_case(case, keep, args))
        summary: dict[str, Any] = {"rounds": rows}
        for name in rows:
            summary[name] = {k: statistics.median(r[k] for r in rows[name])
                             for k in ("seconds", "faults", "peak_rss_mib")}  # fmt: skip
        summary["speedup"] = summary["glibc"]["seconds"] / summary["kept"]["seconds"]
        if case.startswith("train"):
            _, width, depth = case.split("-")
            per_atom = flops_per_atom(Store(args.store), int(width), int(depth), args.max_atoms)
            atoms = statistics.median(r["atoms_per_step"] for r in rows["kept"])
            for name in ("glibc", "kept"):
                gflops = per_atom * atoms / summary[name]["seconds"] / 1e9
                summary[name]["share_of_matmul_peak"] = gflops / peak
        results[case] = summary
        g, k = summary["glibc"], summary["kept"]
        share = (f", {g['share_of_matmul_peak']:.0%} → {k['share_of_matmul_peak']:.0%} of peak"
                 if "share_of_matmul_peak" in k else "")  # fmt: skip
        print(f"{case:12s} {g['seconds']:.4f} s → {k['seconds']:.4f} s "
              f"({summary['speedup']:.2f}x{share}); page faults {g['faults']:,.0f} → "
              f"{k['faults']:,.0f}; peak RSS {g['peak_rss_mib']:,.0f} → "
              f"{k['peak_rss_mib']:,.0f} MiB")  # fmt: skip
    write_json(args.out, {"threads": args.threads, "max_atoms": args.max_atoms,
                          "warmup": args.warmup, "steps": args.steps,
                          "matmul_peak_gflops": peak, "cases": results})  # fmt: skip


if __name__ == "__main__":
    main()
