"""Forward + backward time and memory of the EGNN for a grid of widths, factored vs plain first
edge layer, conservative vs direct forces.

    .venv/bin/python benchmarks/model_forward.py                  # CPU here, 2 threads
    .venv/bin/python benchmarks/model_forward.py --device cuda    # on a GPU when one is lent

The batch: 4 rattled random-alloy fcc cells of 256 atoms (1,024 atoms, cutoff 5 Å, ~43,000
edges), float32. One step = model forward, forces (conservative: autograd with create_graph),
loss E + |F|², backward. Reports seconds per step, structures/s and atoms/s, achieved GFLOP/s
of the forward matmuls (models/size.py) and, as memory, the bytes autograd saves for backward
(what activation checkpointing trims) and, on a GPU, the peak allocated memory. The plain vs
factored ratio is the figure that transfers across machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json

from matscale.data.batch import AtomGraph, collate, graph_sample
from matscale.data.structure import Structure
from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.models.size import forward_flops, parameter_count

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def batch(cutoff: float, seed: int = 0) -> AtomGraph:
    rng = np.random.default_rng(seed)
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)])
    frac = (grid[:, None] + FCC[None]).reshape(-1, 3)
    samples = []
    for _ in range(4):
        a = 3.7
        s = Structure(
            numbers=rng.choice([28, 29, 46, 79], size=len(frac)),
            positions=frac * a + rng.normal(0, 0.08, frac.shape),
            cell=np.eye(3) * 4 * a,
            pbc=np.ones(3, bool),
            source="emt",
        )
        samples.append(graph_sample(s, cutoff))
    return collate(samples)


def saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward while ``fn`` runs (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def step(model: EGNN, g: AtomGraph) -> None:
    out = predict(model, g, create_graph=True)
    loss = out["energy_net"].sum() / len(g.numbers) + out["forces"].pow(2).mean()
    loss.backward()


def measure(cfg: EGNNConfig, g: AtomGraph, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    model = EGNN(cfg).to(device)
    g = g.to(device)
    step(model, g)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        step(model, g)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    atoms, edges = len(g.numbers), g.edge_index.shape[1]
    fwd = forward_flops(cfg).total(atoms, edges)
    model.zero_grad(set_to_none=True)
    return {
        "width": cfg.width,
        "depth": cfg.depth,
        "factored": cfg.factored,
        "force_head": cfg.force_head,
        "parameters": parameter_count(cfg),
        "atoms": atoms,
        "edges": edges,
        "seconds_per_step": seconds,
        "structures_per_s": g.num_graphs / seconds,
        "atoms_per_s": atoms / seconds,
        "forward_gflop": fwd / 1e9,
        "forward_gflops_per_s_if_step_were_3x_forward": 3 * fwd / seconds / 1e9,
        "saved_activations_mib": saved_bytes(lambda: predict(model, g, create_graph=True)) / 2**20,
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = batch(cutoff=5.0)
    runs = []
    for width in args.widths:
        for force_head in ("conservative", "direct"):
            for factored in (False, True):
                cfg = EGNNConfig(
                    width=width,
                    depth=args.depth,
                    factored=factored,
                    force_head=force_head,
                    avg_neighbours=40.0,
                )
                r = measure(cfg, g, args.device, args.repeats)
                runs.append(r)
                print(
                    f"H={width:<5} {force_head:<12} {'factored' if factored else 'plain':<8} "
                    f"{r['seconds_per_step']:.3f} s/step, {r['atoms_per_s']:,.0f} atoms/s, "
                    f"saved activations {r['saved_activations_mib']:,.0f} MiB",
                    flush=True,
                )
    for r in runs:
        if r["factored"]:
            plain = next(
                p
                for p in runs
                if p["width"] == r["width"]
                and not p["factored"]
                and p["force_head"] == r["force_head"]
            )
            r["speedup_vs_plain"] = plain["seconds_per_step"] / r["seconds_per_step"]
    write_json(f"model_forward_{args.device}", {"command": " ".join(sys.argv), "runs": runs})


if __name__ == "__main__":
    main()
