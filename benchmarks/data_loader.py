"""Graphs per second delivered by the DataLoader (graphs built in worker processes).

    .venv/bin/python benchmarks/data_loader.py --store data/store-default

For 0, 1 and 2 workers: batches of at most ``--max-atoms`` atoms from the training sampler,
radius graphs at ``--cutoff`` Å, collated into AtomGraph batches. Reports graphs/s, atoms/s and
edges/s over ``--batches`` batches after a warm-up; the ratio to 0 workers is the figure that
transfers across machines.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, write_json

from matscale.data.batch import GraphDataset, make_loader
from matscale.data.sampler import BatchSampler, SamplerConfig
from matscale.data.store import Store
from matscale.data.transform import GraphSettings


def measure(store: Store, workers: int, args: argparse.Namespace) -> dict:
    sampler = BatchSampler(
        n_atoms=store.n_atoms,
        n_edges=store.n_edges,
        source_ids=store.source_ids,
        sources=store.sources,
        indices=np.arange(len(store)),
        config=SamplerConfig(max_atoms=args.max_atoms),
    )
    settings = GraphSettings.from_stats(
        cutoff=args.cutoff, max_neighbours=None, heads=tuple(store.sources), stats=store.stats
    )
    loader = make_loader(GraphDataset(store, settings), sampler, workers=workers)
    it = iter(loader)
    for _ in range(args.warmup):  # start workers, fill prefetch queues
        next(it)
    graphs = atoms = edges = 0
    t0 = time.perf_counter()
    for _ in range(args.batches):
        b = next(it)
        graphs += b.num_graphs
        atoms += len(b.numbers)
        edges += b.edge_index.shape[1]
    seconds = time.perf_counter() - t0
    del it
    return {
        "workers": workers,
        "batches": args.batches,
        "seconds": seconds,
        "graphs_per_s": graphs / seconds,
        "atoms_per_s": atoms / seconds,
        "edges_per_s": edges / seconds,
        "mean_graphs_per_batch": graphs / args.batches,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--max-atoms", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    store = Store(args.store)
    runs = []
    for w in args.workers:
        r = measure(store, w, args)
        runs.append(r)
        print(
            f"workers={w}: {r['graphs_per_s']:,.0f} graphs/s, {r['atoms_per_s']:,.0f} atoms/s, "
            f"{r['edges_per_s']:,.0f} edges/s ({r['mean_graphs_per_batch']:.0f} graphs/batch)",
            flush=True,
        )
    base = runs[0]["graphs_per_s"]
    for r in runs:
        r["speedup_vs_first"] = r["graphs_per_s"] / base
    write_json(
        "data_loader",
        {
            "command": " ".join(sys.argv),
            "store": str(args.store),
            "structures": len(store),
            "cutoff_A": args.cutoff,
            "max_atoms": args.max_atoms,
            "runs": runs,
            "peak_rss_mb_main": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    main()
