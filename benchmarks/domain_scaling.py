"""Strong and weak scaling of domain-decomposed inference (``matscale.calc.domain``).

    .venv/bin/python benchmarks/domain_scaling.py --model data/runs/demo/model.pt \\
        --head emt-metals --atoms 8000 32000 --processes 1 2

One call is energy, forces and stress of one periodic fcc alloy (``inference.alloy``: the
same structure in every process), computed by W processes of one thread each launched by
torchrun (gloo), each on its slab plus ghosts. Per (atoms, W): the median seconds per call
after a warm-up call, the peak resident memory each process added for it (its slab's graph
and activations), the atoms each process held (owned + ghosts), and against W = 1 the
speed-up and parallel efficiency. Weak scaling: ``--weak-atoms`` atoms per process.
The reference in the same run: the whole structure without domains, in one process of one
thread and of W threads (the best a single process does with the same cores).

Writes ``benchmarks/results/domain_scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from inference import alloy, peak_mib, pick_elements, reset_peak

from matscale.parallel.launch import local_command


def worker(args: argparse.Namespace) -> None:
    """One process of a measurement (under torchrun when ``--domains``)."""
    import torch
    import torch.distributed as dist

    from matscale.calc.domain import decompose, halo, predict_domain
    from matscale.calc.inference import predict_graph
    from matscale.calc.model_file import load_potential
    from matscale.data.batch import collate

    potential = load_potential(args.model)
    head = potential.graph.heads.index(args.head)
    elements = pick_elements(potential.graph.elements[head])
    s = alloy(args.atoms[0], elements, source=args.head)
    if args.domains:
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()

        def call() -> None:
            predict_domain(potential, s, head=args.head, stress=True)

        held = len(decompose(s, rank, world, halo(potential)).index)
        call_small = lambda: predict_domain(  # noqa: E731
            potential, alloy(256, elements, source=args.head), head=args.head, stress=True
        )
    else:
        rank, world = 0, 1

        def call() -> None:
            graph = collate([potential.graph.sample(s, head)])
            predict_graph(potential, graph, forces=True, stress=True)

        held = len(s.numbers)
        call_small = lambda: predict_graph(  # noqa: E731
            potential,
            collate([potential.graph.sample(alloy(256, elements, source=args.head), head)]),
            stress=True,
        )
    call_small()  # warm up on a small cell, then measure this size's own memory
    reset_peak()
    before = peak_mib()
    times = []
    for k in range(args.repeats + 1):
        if args.domains:
            dist.barrier()
        start = time.perf_counter()
        call()
        if k:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    row = {
        "rank": rank,
        "seconds": statistics.median(times),
        "peak_rise_mib": peak_mib() - before,
        "atoms_held": held,
        "threads": torch.get_num_threads(),
    }
    if args.domains:
        rows: list[Any] = [None] * world
        dist.all_gather_object(rows, row)
        dist.destroy_process_group()
    else:
        rows = [row]
    if rank == 0:
        Path(args.out).write_text(json.dumps(rows))


def measure(
    args: argparse.Namespace, atoms: int, processes: int, domains: bool, threads: int
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        common = [str(Path(__file__).resolve()), "--worker", "--model", str(args.model),
                  "--head", args.head, "--atoms", str(atoms), "--repeats", str(args.repeats),
                  "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if domains:
            cmd = local_command([*common, "--domains"], processes=processes)
        else:
            cmd = local_command(common)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        rows = json.loads(out.read_text())
    seconds = max(r["seconds"] for r in rows)  # a call ends when its slowest process does
    return {
        "atoms": atoms,
        "processes": processes,
        "domains": domains,
        "threads_per_process": threads,
        "seconds": seconds,
        "atoms_per_s": atoms / seconds,
        "peak_rise_mib_per_process": max(r["peak_rise_mib"] for r in rows),
        "atoms_held_per_process": [r["atoms_held"] for r in rows],
        "ranks": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("data/runs/demo/model.pt"))
    p.add_argument("--head", default="emt-metals")
    p.add_argument("--atoms", type=int, nargs="+", default=[8000, 32000])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--weak-atoms", type=int, default=8000, help="atoms per process (weak)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--domains", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if 1 not in args.processes:
        p.error("--processes must include 1: speed-ups are against one process")
    strong, weak, reference = [], [], []
    for n in args.atoms:
        for threads in sorted({1, max(args.processes)}):
            reference.append(measure(args, n, 1, domains=False, threads=threads))
        for w in args.processes:
            strong.append(measure(args, n, w, domains=True, threads=1))
    for w in args.processes:
        weak.append(measure(args, args.weak_atoms * w, w, domains=True, threads=1))
    for rows in (strong, weak):
        for r in rows:
            base = next(
                x
                for x in rows
                if x["processes"] == 1 and (rows is weak or x["atoms"] == r["atoms"])
            )
            if rows is strong:
                r["speedup"] = base["seconds"] / r["seconds"]
            else:  # the same work per process: ideal is the same time
                r["speedup"] = base["seconds"] * r["processes"] / r["seconds"]
            r["efficiency"] = r["speedup"] / r["processes"]
    header = f"{'kind':<8}{'atoms':>8}{'W':>3}{'s/call':>9}{'atoms/s':>9}{'speed-up':>9}"
    print(header + f"{'eff.':>6}{'MiB/proc':>10}  atoms held per process")
    for kind, rows in (("strong", strong), ("weak", weak), ("whole", reference)):
        for r in rows:
            extra = (
                f"{r['speedup']:>9.2f}{r['efficiency']:>6.2f}"
                if "speedup" in r
                else f"{r['threads_per_process']:>9} threads"
            )
            print(
                f"{kind:<8}{r['atoms']:>8,}{r['processes']:>3}{r['seconds']:>9.2f}"
                f"{r['atoms_per_s']:>9,.0f}{extra}{r['peak_rise_mib_per_process']:>10.0f}"
                f"  {r['atoms_held_per_process']}"
            )
    write_json("domain_scaling", {"model": str(args.model), "head": args.head, "strong": strong,
                                  "weak": weak, "whole_structure": reference})  # fmt: skip


if __name__ == "__main__":
    main()
