"""Peak memory and time of one conservative-force training step with activation checkpointing
off, per layer, per edge chunk, and both.

    .venv/bin/python benchmarks/activation_memory.py                # CPU here, 2 threads
    .venv/bin/python benchmarks/activation_memory.py --device cuda  # on a GPU when one is lent

The batch is ``model_forward.py``'s (4 rattled fcc alloy cells, 1,024 atoms, ~43,000 edges at
5 Å). Each configuration runs in its own process: build the model and batch, one warm-up step,
then the measured steps. Memory on the CPU is the rise of the process's peak RSS over its
resident size before the first step (large tensors are mmap'd and returned to the system when
freed, so the high-water mark tracks the peak of live tensors); on a GPU, the peak allocated
memory. Also the bytes autograd keeps between forward and backward. Ratios to the run without
checkpointing, in the same invocation, are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, rss_breakdown_mb, write_json
from model_forward import batch, saved_bytes, step

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.parallel.checkpointing import apply_ac

#: (name, whole layers, edge chunk)
CONFIGS = [
    ("none", False, 0),
    ("layers", True, 0),
    ("edge-chunks", False, 8192),
    ("layers+edge-chunks", True, 8192),
]


def measure_one(name: str, layers: bool, chunk: int, args: argparse.Namespace) -> dict:
    """One configuration, in this process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = EGNN(EGNNConfig(width=args.width, depth=args.depth, heads=("emt",))).to(device)
    if layers or chunk:
        apply_ac(model, edge_chunk=chunk, whole_layers=layers)
    g = batch(5.0).to(device)
    saved = saved_bytes(lambda: predict(model, g, create_graph=True))
    model.zero_grad(set_to_none=True)
    before = rss_breakdown_mb()["RssAnon"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step(model, g)  # warm-up: also the peak
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else peak_rss_mb() - before
    )
    times = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        step(model, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {
        "name": name,
        "whole_layers": layers,
        "edge_chunk": chunk,
        "atoms": len(g.numbers),
        "edges": int(g.edge_index.shape[1]),
        "step_seconds": min(times),
        "peak_step_memory_mib": peak,
        "saved_activations_mib": saved / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = ap.parse_args()
    if args.one:
        name, layers, chunk = next(c for c in CONFIGS if c[0] == args.one)
        print(json.dumps(measure_one(name, layers, chunk, args)))
        return
    runs = []
    for name, _, _ in CONFIGS:
        cmd = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    base = runs[0]
    for r in runs:
        r["memory_vs_none"] = r["peak_step_memory_mib"] / base["peak_step_memory_mib"]
        r["time_vs_none"] = r["step_seconds"] / base["step_seconds"]
        print(
            f"{r['name']:<20} step {r['step_seconds']:6.2f} s ({r['time_vs_none']:.2f}x)  "
            f"peak {r['peak_step_memory_mib']:7.0f} MiB ({r['memory_vs_none']:.2f}x)  "
            f"saved by autograd {r['saved_activations_mib']:6.0f} MiB",
            flush=True,
        )
    write_json(
        f"activation_memory_{args.device}",
        {
            "command": " ".join(["benchmarks/activation_memory.py", *sys.argv[1:]]),
            "width": args.width,
            "depth": args.depth,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
