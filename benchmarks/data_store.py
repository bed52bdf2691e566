"""Pack and read back a store of N structures; report throughput and peak memory.

    .venv/bin/python benchmarks/data_store.py --structures 1000000 --workers 2

Structures are synthetic (jittered fcc cells of 8–32 atoms of 4 elements, with random labels):
the store's speed does not depend on where labels come from, and a million EMT calculations
would take hours here. Packing runs through ``PartWriter`` in ``--workers`` processes (each one
part, like nodes of a cluster) and one ``merge_parts``; every record is checked
(``check_structure``) and its neighbours counted at 5 Å, exactly as ``matscale data pack`` does.
Reading draws ``--reads`` random indices in a fresh process. Peak RSS is reported per packing
process and for the reader, split into anonymous memory and file-backed pages of the maps.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mb, rss_breakdown_mb, write_json

from matscale.data.pack import PackConfig, PartWriter
from matscale.data.store import Store, merge_parts
from matscale.data.structure import Structure

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def synthetic(k: int, rng: np.random.Generator) -> Structure:
    """A jittered fcc supercell of 8–32 atoms with random labels (structure number ``k``)."""
    reps = [(2, 1, 1), (2, 2, 1), (2, 2, 2)][k % 3]
    grid = np.array(
        [(i, j, l) for i in range(reps[0]) for j in range(reps[1]) for l in range(reps[2])]
    )
    frac = (grid[:, None, :] + FCC[None]).reshape(-1, 3)
    a = 3.6
    positions = frac * a + rng.normal(0, 0.05, frac.shape)
    n = len(positions)
    return Structure(
        numbers=rng.choice([13, 28, 29, 79], size=n),
        positions=positions,
        cell=np.diag(reps).astype(float) * a,
        pbc=np.ones(3, bool),
        energy=float(rng.normal(-3.5 * n, 1.0)),
        forces=rng.normal(0, 0.5, (n, 3)),
        stress=rng.normal(0, 0.01, 6),
        source=("synthetic-a", "synthetic-b")[k % 2],
        family="bulk",
        key=f"synthetic#{k}",
    )


def pack_part(
    out: Path, part: int, start: int, stop: int, shard_mb: float, queue: mp.Queue
) -> None:
    rng = np.random.default_rng(part)
    t0 = time.perf_counter()
    with PartWriter(out, f"p{part:04d}", PackConfig(cutoff=5.0, shard_mb=shard_mb)) as writer:
        for k in range(start, stop):
            writer.add(synthetic(k, rng))
    queue.put(
        {
            "part": part,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "structures": stop - start,
        }
    )


def read_random(root: Path, reads: int, max_open: int, queue: mp.Queue) -> None:
    store = Store(root, max_open=max_open)  # checksums checked as each shard is first opened
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(store), size=reads)
    t0 = time.perf_counter()
    atoms = 0
    for i in idx:
        atoms += store[int(i)].n_atoms
    seconds = time.perf_counter() - t0
    queue.put(
        {
            "max_open": max_open,
            "reads": reads,
            "seconds": seconds,
            "structures_per_s": reads / seconds,
            "atoms_per_s": atoms / seconds,
            "peak_rss_mb": peak_rss_mb(),
            **{f"{k}_mb": v for k, v in rss_breakdown_mb().items()},
        }
    )


def _result(queue: mp.Queue, procs: list) -> dict:
    """Next result from the queue; fail (instead of waiting forever) if a process died."""
    import queue as q

    while True:
        try:
            return queue.get(timeout=1.0)
        except q.Empty:
            if any(p.exitcode not in (None, 0) for p in procs):
                raise RuntimeError("a benchmark process failed; see its traceback above") from None


def run(n: int, args: argparse.Namespace, root: Path) -> dict:
    workers = args.workers
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    bounds = np.linspace(0, n, workers + 1).astype(int)
    t0 = time.perf_counter()
    procs = [
        ctx.Process(
            target=pack_part, args=(root, w, bounds[w], bounds[w + 1], args.shard_mb, queue)
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    parts = [_result(queue, procs) for _ in procs]
    for p in procs:
        p.join()
    t_parts = time.perf_counter() - t0
    t1 = time.perf_counter()
    meta = merge_parts(root)
    t_merge = time.perf_counter() - t1
    total = time.perf_counter() - t0
    reads = []
    for max_open in args.max_open:  # a fresh process each, so peak RSS is the reader's own
        reader = ctx.Process(target=read_random, args=(root, args.reads, max_open, queue))
        reader.start()
        reads.append(_result(queue, [reader]))
        reader.join()
    return {
        "structures": n,
        "atoms": meta["n_atoms"],
        "store_mib": meta["bytes"] / 2**20,
        "shards": len(meta["shards"]),
        "pack_workers": workers,
        "pack_seconds": total,
        "merge_seconds": t_merge,
        "pack_structures_per_s": n / total,
        "pack_parts_seconds": t_parts,
        "pack_peak_rss_mb_per_worker": max(p["peak_rss_mb"] for p in parts),
        "shard_mb": args.shard_mb,
        "reads": reads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--structures", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reads", type=int, default=200_000)
    ap.add_argument("--shard-mb", type=float, default=64.0)
    ap.add_argument(
        "--max-open",
        type=int,
        nargs="+",
        default=[16, 4],
        help="reader runs, one per value of Store(max_open=...)",
    )
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: tmp)")
    args = ap.parse_args()
    results = []
    for n in args.structures:
        root = Path(tempfile.mkdtemp(prefix="matscale-store-", dir=args.dir))
        try:
            r = run(n, args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results.append(r)
        print(
            f"{n:>10,} structures ({r['store_mib']:,.0f} MiB, {r['shards']} shards): "
            f"pack {r['pack_structures_per_s']:,.0f} structures/s with {args.workers} "
            f"processes (peak RSS {r['pack_peak_rss_mb_per_worker']:.0f} MiB each)",
            flush=True,
        )
        for rd in r["reads"]:
            print(
                f"    random reads, max_open={rd['max_open']}: {rd['structures_per_s']:,.0f} "
                f"structures/s; reader peak RSS {rd['peak_rss_mb']:.0f} MiB (anonymous "
                f"{rd['RssAnon_mb']:.0f}, file-backed {rd['RssFile_mb']:.0f})",
                flush=True,
            )
    write_json("data_store", {"command": " ".join(sys.argv), "runs": results})


if __name__ == "__main__":
    main()
