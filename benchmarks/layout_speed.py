"""Training steps per second of matscale's EGNN against the paper's layer layout at equal
parameters, conservative forces both, on the default data; and each step's share of the fp32
matmul peak measured in the same run.

    .venv/bin/python benchmarks/layout_speed.py --store data/store-default            # width 128
    .venv/bin/python benchmarks/layout_speed.py --store data/store-default --width 80 --depth 2

One process, ``--threads`` threads, the same batches (≤ ``--max-atoms`` atoms, drawn from the
store in a seeded order) for every model. A step is ``matscale.train.step.train_step``: forward,
forces (and their derivatives for the loss), energy + force loss, backward, clipped AdamW step.
matscale's EGNN runs with forces three ways — autograd's double backward, written out
(``parallel.explicit_forces``), written out and compiled (``parallel.compile``); the paper's
layout (benchmarks/peers/paper_egnn.py, conservative: forces −∂E/∂x) at the width whose
parameters outside the element embedding equal matscale's, with autograd — its best mode: it
has no written-out backward, and ``torch.compile`` cannot differentiate twice (tried, the
failure recorded). Compiled steps are timed after ``--warmup`` steps that compile.

Share of peak: matmul FLOPs of one step counted by ``torch.utils.flop_counter`` on autograd's
path (the model's work; the written-out path does the same products, and a path's own
overheads must not raise its share), per atom, times atoms/s, over the 2048² fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch._functorch.config

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import store_batches, write_json
from paper_egnn import PaperEGNN, PaperEGNNConfig, build_paper_egnn
from train_throughput import matmul_peak_gflops

from matscale.config import TrainConfig
from matscale.data.batch import AtomGraph
from matscale.data.store import Store
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics
from matscale.models.physics import predict
from matscale.parallel.plan import compile_forward
from matscale.train.step import train_step


def matscale_model(store: Store, width: int, depth: int) -> EGNN:
    """The default EGNN at ``width`` and ``depth``, one head per source, the store's statistics."""
    stats = store.stats
    neighbours = float(np.mean([s["mean_neighbours"] for s in stats.values()]))
    model = EGNN(
        EGNNConfig(width=width, depth=depth, heads=tuple(store.sources), avg_neighbours=neighbours)
    )
    set_statistics(model, stats)
    return model


def paper_model(store: Store, width: int, depth: int) -> PaperEGNN:
    """The paper's layout, conservative forces, with every source's statistics."""
    cfg = PaperEGNNConfig(width=width, depth=depth, force_head="conservative")
    return build_paper_egnn(cfg, list(store.stats.values()))


def non_embedding(model: torch.nn.Module) -> int:
    """Trainable parameters outside the element embedding (the N of scaling laws)."""
    return sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("embedding")
    )


def equal_paper_width(store: Store, target: int, depth: int) -> int:
    """The paper-layout width whose non-embedding parameters come closest to ``target``
    (bisection: the count grows with the width)."""

    def count(w: int) -> int:
        return non_embedding(paper_model(store, w, depth))

    lo, hi = 1, 8
    while count(hi) < target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(count(w) - target))


def step_flops_per_atom(model: torch.nn.Module, g: AtomGraph) -> float:
    """Matmul FLOPs of one conservative step (autograd's path) on ``g``, per atom."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        out = predict(model, g, create_graph=True)
        (out["energy_net"].sum() + out["forces"].pow(2).sum()).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(g.numbers)


def time_steps(
    model: torch.nn.Module, graphs: list[AtomGraph], *, explicit: bool, warmup: int
) -> dict[str, float]:
    """Seconds, structures and atoms of ``len(graphs) - warmup`` training steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t = TrainConfig()
    device = torch.device("cpu")
    seconds = 0.0
    structures = atoms = 0
    for k, g in enumerate(graphs):
        t0 = time.perf_counter()
        train_step(model, [g], optimizer, t, lr=1e-3, device=device, explicit_forces=explicit)
        if k >= warmup:
            seconds += time.perf_counter() - t0
            structures += g.num_graphs
            atoms += len(g.numbers)
    return {"seconds": seconds, "structures": structures, "atoms": atoms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--max-atoms", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results name (default layout_speed_w<width>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    order = np.random.default_rng(0).permutation(len(store))
    graphs = store_batches(store, args.max_atoms, args.warmup + args.steps, order)
    peak = matmul_peak_gflops(args.threads)

    mine = matscale_model(store, args.width, args.depth)
    target = non_embedding(mine)
    paper_width = equal_paper_width(store, target, args.depth)
    print(
        f"fp32 matmul peak {peak:.0f} GFLOP/s ({args.threads} threads); matscale width "
        f"{args.width}: {target:,} non-embedding parameters; the paper's layout at width "
        f"{paper_width}: {non_embedding(paper_model(store, paper_width, args.depth)):,}",
        flush=True,
    )
    flops = {
        "matscale": step_flops_per_atom(matscale_model(store, args.width, args.depth), graphs[0]),
        "paper": step_flops_per_atom(paper_model(store, paper_width, args.depth), graphs[0]),
    }

    def fresh_mine() -> torch.nn.Module:
        torch.manual_seed(0)
        return matscale_model(store, args.width, args.depth)

    def fresh_paper() -> torch.nn.Module:
        torch.manual_seed(0)
        return paper_model(store, paper_width, args.depth)

    # (name, layout, model factory, forces written out, compiled)
    plans: list[tuple[str, str, Callable[[], torch.nn.Module], bool, bool]] = [
        ("matscale, autograd", "matscale", fresh_mine, False, False),
        ("matscale, written out", "matscale", fresh_mine, True, False),
        ("matscale, written out + compiled", "matscale", fresh_mine, True, True),
        ("paper layout, autograd", "paper", fresh_paper, False, False),
        ("paper layout, autograd + compiled", "paper", fresh_paper, False, True),
    ]
    runs = []
    for name, layout, build, explicit, compiled in plans:
        model = build()
        if compiled:
            # donated buffers refuse create_graph before anything else would; without them
            # the attempt meets the real limit (aot_autograd has no double backward)
            torch._functorch.config.donated_buffer = explicit
            compile_forward(model)
        try:
            r = time_steps(model, graphs, explicit=explicit, warmup=args.warmup)
        except Exception as e:  # a peer's mode that torch cannot run is a result, not a crash
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"{name:<36} failed: {reason}", flush=True)
            runs.append({"name": name, "layout": layout, "failed": reason})
            continue
        atoms_per_s = r["atoms"] / r["seconds"]
        achieved = atoms_per_s * flops[layout] / 1e9
        run = {
            "name": name,
            "layout": layout,
            "width": args.width if layout == "matscale" else paper_width,
            "depth": args.depth,
            "non_embedding_parameters": non_embedding(model),
            "forces_written_out": explicit,
            "compiled": compiled,
            "steps_timed": args.steps,
            "seconds_per_step": r["seconds"] / args.steps,
            "structures_per_s": r["structures"] / r["seconds"],
            "atoms_per_s": atoms_per_s,
            "step_mflop_per_atom": flops[layout] / 1e6,
            "achieved_gflops": achieved,
            "share_of_matmul_peak": achieved / peak,
        }
        runs.append(run)
        print(
            f"{name:<36} {run['structures_per_s']:7.1f} structures/s {atoms_per_s:8.0f} atoms/s "
            f"{achieved:6.1f} GFLOP/s ({100 * run['share_of_matmul_peak']:.0f}% of peak)",
            flush=True,
        )
    done = [r for r in runs if "failed" not in r]
    best_paper = max(
        (r for r in done if r["layout"] == "paper"), key=lambda r: r["structures_per_s"]
    )
    for r in done:
        r["speed_vs_best_paper_layout"] = r["structures_per_s"] / best_paper["structures_per_s"]
        print(f"{r['name']:<36} {r['speed_vs_best_paper_layout']:.2f}x the paper layout's best")
    write_json(
        args.out or f"layout_speed_w{args.width}",
        {
            "command": " ".join(sys.argv),
            "store": str(args.store),
            "threads": args.threads,
            "max_atoms": args.max_atoms,
            "matmul_peak_gflops": peak,
            "mean_atoms_per_batch": float(np.mean([len(g.numbers) for g in graphs])),
            "mean_edges_per_batch": float(np.mean([g.edge_index.shape[1] for g in graphs])),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
