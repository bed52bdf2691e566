"""A billion-parameter EGNN taking real training steps on this 24 GiB, 2-core machine.

    .venv/bin/python benchmarks/billion.py --store data/store-default     # the machine alone

Runs of ``matscale train`` through torchrun on 2 processes of one thread each, on the
default data, a few steps each, the model at the paper's width (3,072 against its 3,000),
depth 18: 1.03B parameters with the store's three heads (1.04B with a direct head). Float32
(not bf16: this CPU has no AVX-512 BF16, and under FSDP2's bf16 gathers the layers' matmuls
ran in ATen's reference GEMM — no step in 20 minutes at width 7,700), AdamW, no EMA (a
second copy of a billion weights):

- **FSDP2, conservative forces written out** (``parallel.explicit_forces``): weights,
  gradients and AdamW state sharded over the two processes (ZeRO-3); the forces are a
  forward computation and training one first-order backward, so each layer is gathered
  only around its own calls (parallel/fsdp.py);
- **FSDP2, conservative forces by autograd** (double backward, per-layer activation
  checkpointing): fsdp.py must keep every layer gathered from the forward to the end of the
  backward — a whole copy of the weights per process;
- **DeepSpeed ZeRO-3, direct forces** (ZeRO-3 and the double backward do not mix:
  docs/training.md), the model built already sharded (``zero.Init``);
- **FSDP2, direct forces**: as the first, one backward.

A run the machine cannot hold is a result too: its exit, the steps it finished and their peak
memory are recorded (a run past ``--timeout`` is stopped and its steps kept).

Batches are tiny (``--max-atoms``, default 8): on two CPU cores a step of a billion
parameters takes minutes, most of it the optimizer and the gathers, and the point is that it
fits and trains. Recorded per run: the peak RSS of each process (VmHWM, from the run's log),
seconds per step, the loss of each step, the planner's per-process memory beside it, and
``free -m``'s view of the machine before. Host memory and device memory are the same RAM
here, so CPU offload would move nothing; it is not used.

Writes ``benchmarks/results/<--out>.json`` (``billion.json``).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import kill_tree, write_json

from matscale.parallel.launch import local_command

#: (name, overrides) of the runs (``--only`` picks some).
RUNS = [
    ("fsdp-written-out", ["parallel.backend=fsdp", "parallel.precision=fp32",
                          "parallel.explicit_forces=true"]),
    ("fsdp-conservative", ["parallel.backend=fsdp", "parallel.precision=fp32",
                           "parallel.activation_checkpointing=true"]),
    ("deepspeed-zero3-direct", ["parallel.backend=deepspeed", "parallel.zero_stage=3",
                                "model.force_head=direct"]),
    ("fsdp-direct", ["parallel.backend=fsdp", "parallel.precision=fp32",
                     "parallel.activation_checkpointing=true", "model.force_head=direct"]),
]  # fmt: skip


def run(name: str, overrides: list[str], args: argparse.Namespace, out: Path) -> dict:
    common = [f"data.store={args.store}", f"out_dir={out}", f"name={name}",
              f"model.width={args.width}", f"model.depth={args.depth}",
              f"data.max_atoms={args.max_atoms}",
              f"train.steps={args.steps}", "train.eval_every=100000",
              "train.checkpoint_every=100000", "train.ema_decay=null", "train.warmup_steps=1",
              "train.lr=1e-5", "train.log_every=1", "data.val_max_structures=2",
              "parallel.threads=1",
              *overrides]  # fmt: skip
    cmd = local_command(["-m", "matscale", "train", *common, "--no-progress"], processes=2)
    started = time.perf_counter()
    # glibc's malloc keeps freed blocks under a threshold that rises to the largest block
    # freed so far (up to 32 MiB), and a sharded run frees many shards of a few MiB: fixed at
    # 64 KiB they go back to the system (FSDP2 at width 1,536, depth 18: 1,862 MiB per process
    # between steps instead of 2,476; docs/training.md)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        result = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:  # a result too: what ran in the time given
        kill_tree(proc.pid)  # the launcher and its ranks (killing the launcher leaves them)
        proc.communicate(timeout=60)
        result = subprocess.CompletedProcess(cmd, -9, "", f"timed out after {args.timeout:.0f} s")
    seconds = time.perf_counter() - started
    row: dict = {"run": name, "overrides": overrides, "wall_s": seconds,
                 "returncode": result.returncode}  # fmt: skip
    log = out / name / "metrics.jsonl"
    if result.returncode:
        row["error"] = result.stderr[-3000:]
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    train = [r for r in rows if r.get("kind") == "train"]
    if not train:  # the steps a stopped run did finish are kept below
        row.setdefault("error", "no training step logged")
        return row
    row.update(
        steps=len(train),
        losses=[r.get("loss") for r in train],
        # the log's seconds run from the first step on: per step, their differences
        seconds_per_step=[float(x) for x in np.diff([0.0] + [r["seconds"] for r in train])],
        peak_rss_mib=max(float(r["peak_rss_mib"]) for r in rows if "peak_rss_mib" in r),
    )
    from matscale.config import load
    from matscale.parallel.commands import _with_heads
    from matscale.parallel.planner import HARDWARE, edges_per_atom_of, model_costs, plan

    cfg = load(None, common)
    costs = model_costs(_with_heads(cfg), checkpointing=cfg.parallel.activation_checkpointing)
    ratio = edges_per_atom_of(args.store) or 40.0
    planned = plan(cfg, HARDWARE["cpu-2core"], 2, costs, edges_per_atom=ratio, utilisation=0.1)
    row["parameters"] = costs.parameters
    row["planned_per_process_MiB"] = (planned.total_bytes + sum(planned.host.values())) / 2**20
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default="data/store-default")
    p.add_argument("--width", type=int, default=3072)
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--max-atoms", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1200)
    p.add_argument("--only", nargs="*", default=None, help="run only these, e.g. fsdp-direct")
    p.add_argument("--out", default="billion", help="results name under results/")
    args = p.parse_args()
    free = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in RUNS:
            if args.only is not None and name not in args.only:
                continue
            row = run(name, overrides, args, Path(tmp))
            rows.append(row)
            if "error" in row:
                print(f"{name}: failed (exit {row['returncode']}) after {row.get('steps', 0)} "
                      f"steps\n{row['error'][-800:]}")  # fmt: skip
            if "steps" in row:
                print(f"{name}: {row['parameters']:,} parameters, {row['steps']} steps, "
                      f"s/step {row['seconds_per_step']}, losses {row['losses']}, peak RSS "
                      f"{row['peak_rss_mib']:,.0f} MiB per process (planned "
                      f"{row['planned_per_process_MiB']:,.0f})")  # fmt: skip
    write_json(args.out, {"store": args.store, "width": args.width, "depth": args.depth,
                          "free_before": free,
                           "runs": rows})  # fmt: skip


if __name__ == "__main__":
    main()
