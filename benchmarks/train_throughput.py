"""Training throughput and memory per backend, with and without activation checkpointing
and bf16, on the default data.

    .venv/bin/python benchmarks/train_throughput.py --store data/store-default

Each configuration is a real ``matscale train`` run (torchrun with 2 processes of 1 thread for
``ddp`` and ``fsdp``; 1 process of 2 threads for ``none``) of ``--steps`` steps with batches of
``--max-atoms`` atoms per process. Reported: structures/s and atoms/s over the steps after the
first 5; the same for the training step alone (rank 0's ``step_s`` in metrics.jsonl, without
its waits for batches, ``data_s``: reading them and building their graphs) and the share of
the loop spent waiting; the peak RSS of a training process; the matmul FLOPs of one training
step (counted by ``torch.utils.flop_counter`` on a batch of the store: forward, forces with
create_graph, backward) and their rate as a share of this machine's fp32 matmul peak
measured in the same run (2048x2048, 2 threads), before the first configuration and after each
round: the highest, so that a peak measured while the shared machine was slow cannot inflate
the shares. On a GPU, benchmarks/gpu_check.py measures the CUDA paths.

Forces three ways: autograd's double backward; written out (``parallel.explicit_forces``,
one ordinary backward in training); written out and compiled (``parallel.compile``: the first
steps compile, which the 5 untimed steps absorb when the compiled kernels are already cached,
so run once before timing). ``--only NAME ...`` runs a subset, ``--depth`` and ``--width``
another model (the demo's: ``--width 80 --depth 2``). ``--width 78 80 --rounds 3`` compares
widths: every configuration at every width once per round, alternated, and each row is the
round of median atoms/s (this shared machine's speed drifts by ±20 % over minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import step_model, store_batches, write_json

from matscale.data.store import Store
from matscale.models.physics import predict
from matscale.parallel.launch import local_command

#: (backend, activation checkpointing, precision, forces): forces by autograd's double
#: backward, written out (``parallel.explicit_forces``), or written out and compiled.
CONFIGS = [
    ("none", False, "fp32", "autograd"),
    ("none", True, "fp32", "autograd"),
    ("none", False, "bf16", "autograd"),
    ("ddp", False, "fp32", "autograd"),
    ("fsdp", False, "fp32", "autograd"),
    ("fsdp", True, "fp32", "autograd"),
    ("deepspeed", False, "fp32", "autograd"),
    ("none", False, "fp32", "explicit"),
    ("none", False, "fp32", "compiled"),
    ("none", False, "bf16", "compiled"),
    ("ddp", False, "fp32", "explicit"),
    ("ddp", False, "fp32", "compiled"),
]


def config_name(backend: str, ac: bool, precision: str, forces: str, width: int) -> str:
    """The run's name, e.g. ``ddp-noac-fp32-compiled-w128`` (``--only`` takes these without
    the width)."""
    return f"{backend}-{'ac' if ac else 'noac'}-{precision}-{forces}-w{width}"


def matmul_peak_gflops(threads: int = 2) -> float:
    """fp32 GFLOP/s of a 2048x2048 matmul on ``threads`` threads (best of 10)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def step_flops_per_atom(store: Store, width: int, depth: int, max_atoms: int) -> float:
    """Matmul FLOPs of one conservative training step on a batch of the store, per atom, as
    autograd's double backward does it: the model's work, the same count for every row (the
    written-out backward does the same products, and a share of peak must not grow by
    counting a path's own overheads)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = store_batches(store, max_atoms, 1)[0]
    atoms = len(g.numbers)
    model = step_model(store, width, depth)
    counter = FlopCounterMode(display=False)
    with counter:
        out = predict(model, g, create_graph=True)
        (out["energy_net"].sum() + out["forces"].abs().sum()).backward()
    return counter.get_total_flops() / atoms


def run(
    store: Path,
    backend: str,
    ac: bool,
    precision: str,
    forces: str,
    width: int,
    args: argparse.Namespace,
    out: Path,
) -> dict:
    name = config_name(backend, ac, precision, forces, width)
    overrides = [
        f"data.store={store}",
        f"out_dir={out}",
        f"name={name}",
        f"parallel.backend={backend}",
        f"parallel.precision={precision}",
        "parallel.zero_stage=2",
        f"parallel.activation_checkpointing={str(ac).lower()}",
        f"model.width={width}",
        f"model.depth={args.depth}",
        f"parallel.explicit_forces={str(forces != 'autograd').lower()}",
        f"parallel.compile={str(forces == 'compiled').lower()}",
        f"data.max_atoms={args.max_atoms}",
        f"train.steps={args.steps}",
        f"train.eval_every={10 * args.steps}",
        f"train.checkpoint_every={10 * args.steps}",
        "data.val_max_structures=20",
        "train.log_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if backend != "none" else "2"}
    threads = "parallel.threads=2" if backend == "none" else "parallel.threads=1"
    program = ["-m", "matscale", "train", *overrides, threads, "--no-progress"]
    cmd = local_command(program, processes=1 if backend == "none" else 2)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    world = 1 if backend == "none" else 2
    return {
        "name": name,
        "backend": backend,
        "activation_checkpointing": ac,
        "precision": precision,
        "forces": forces,
        "width": width,
        "depth": args.depth,
        "processes": world,
        **timed_figures(train, world),
        "peak_rss_mib_per_process": max(r["peak_rss_mib"] for r in train),
    }


def timed_figures(train: list[dict], world: int, untimed: int = 5) -> dict:
    """Speeds over a run's steps after the first ``untimed`` (compiling, warming caches), from
    rank 0's rows of metrics.jsonl (``kind`` train) in a run of ``world`` processes: the
    loop's atoms/s and structures/s; the training step's alone (rank 0's ``step_s``) and the
    share of the loop spent waiting for batches (its ``data_s``: reading them, building their
    graphs)."""
    timed = train[untimed:]
    seconds = train[-1]["seconds"] - train[untimed - 1]["seconds"]
    atoms = world * sum(r["atoms"] for r in timed)
    step_s = sum(r["step_s"] for r in timed)
    data_s = sum(r["data_s"] for r in timed)
    return {
        "steps_timed": len(timed),
        "atoms_per_s": atoms / seconds,
        "structures_per_s": world * sum(r["structures"] for r in timed) / seconds,
        "step_atoms_per_s": atoms / step_s,
        "data_share": data_s / (data_s + step_s),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--width", type=int, nargs="+", default=[128], help="one or more widths")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--max-atoms", type=int, default=512)
    ap.add_argument(
        "--rounds", type=int, default=1, help="rounds of every configuration; medians reported"
    )
    ap.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="run only these configurations, e.g. none-noac-fp32-autograd none-noac-fp32-compiled",
    )
    ap.add_argument("--out", default="train_throughput", help="results name under results/")
    args = ap.parse_args()
    store = Store(args.store)
    peaks = [matmul_peak_gflops()]
    flops_atom = {w: step_flops_per_atom(store, w, args.depth, args.max_atoms) for w in args.width}
    print(
        f"fp32 matmul peak {peaks[0]:.0f} GFLOP/s (2 threads, before); one training step: "
        + ", ".join(f"{f / 1e6:.1f} MFLOP per atom at width {w}" for w, f in flops_atom.items()),
        flush=True,
    )
    chosen = [  # each configuration at every width in turn: compared widths run side by side
        (config, width)
        for config in CONFIGS
        for width in args.width
        if args.only is None or config_name(*config, width).rsplit("-w", 1)[0] in args.only
    ]
    rounds: dict[str, list[dict]] = {}
    failed: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            # every configuration once per round, in the same order: a slow spell of the shared
            # machine then falls on all of them, not on one
            for (backend, ac, precision, forces), width in chosen:
                name = config_name(backend, ac, precision, forces, width)
                if any(f["name"] == name for f in failed):
                    continue
                folder = Path(tmp) / f"round-{k}"
                try:
                    r = run(args.store, backend, ac, precision, forces, width, args, folder)
                except RuntimeError as e:  # one failing configuration must not lose the others
                    print(f"{name:<34} failed: {str(e).splitlines()[-1][:300]}", flush=True)
                    failed.append({"name": name, "error": str(e)[-3000:]})
                    continue
                r["achieved_gflops"] = r["atoms_per_s"] * flops_atom[width] / 1e9
                r["step_achieved_gflops"] = r["step_atoms_per_s"] * flops_atom[width] / 1e9
                rounds.setdefault(name, []).append(r)
                print(
                    f"{name:<34} {r['structures_per_s']:7.1f} structures/s "
                    f"{r['atoms_per_s']:8.0f} atoms/s  peak RSS "
                    f"{r['peak_rss_mib_per_process']:6.0f} MiB/process  "
                    f"{r['achieved_gflops']:5.1f} GFLOP/s; the step alone "
                    f"{r['step_atoms_per_s']:6.0f} atoms/s, waiting for batches "
                    f"{100 * r['data_share']:2.0f}%",
                    flush=True,
                )
            peaks.append(matmul_peak_gflops())
    peak = max(peaks)
    failed_names = {f["name"] for f in failed}  # a configuration that failed in any round
    runs = [median_run(rows) for name, rows in rounds.items() if name not in failed_names]
    print(f"fp32 matmul peaks {[round(p) for p in peaks]} GFLOP/s; shares of {peak:.0f}:")
    for r in runs:
        r["share_of_matmul_peak"] = r["achieved_gflops"] / peak
        r["step_share_of_matmul_peak"] = r["step_achieved_gflops"] / peak
        print(
            f"{r['name']:<34} {r['atoms_per_s']:8.0f} atoms/s "
            f"{100 * r['share_of_matmul_peak']:3.0f}% of peak, the step alone "
            f"{100 * r['step_share_of_matmul_peak']:3.0f}%"
            + (f" (median of {args.rounds} rounds)" if args.rounds > 1 else ""),  # all ran
            flush=True,
        )
    for r in runs:  # against the first configuration of the same width
        base = next(b for b in runs if b["width"] == r["width"])
        r["speed_vs_single_process_fp32"] = r["atoms_per_s"] / base["atoms_per_s"]
    write_json(
        args.out,
        {
            "command": " ".join(sys.argv),
            "store": str(args.store),
            "rounds": args.rounds,
            "matmul_peak_gflops": peak,
            "matmul_peaks_gflops": peaks,
            "step_flops_per_atom": {str(w): f for w, f in flops_atom.items()},
            "runs": runs,
            "failed": failed,
            "mean_atoms": float(np.mean(store.n_atoms)),
        },
    )


def median_run(rows: list[dict]) -> dict:
    """One configuration's rounds as one row: the round of median atoms/s (the lower middle
    one of an even count), with every round's atoms/s and the highest peak RSS beside it."""
    ordered = sorted(rows, key=lambda r: r["atoms_per_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["rounds_atoms_per_s"] = [r["atoms_per_s"] for r in rows]
    middle["peak_rss_mib_per_process"] = max(r["peak_rss_mib_per_process"] for r in rows)
    return middle


if __name__ == "__main__":
    main()
