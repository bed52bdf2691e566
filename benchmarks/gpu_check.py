"""What a lent GPU tells us in a few minutes: step time and MFU at widths 512–4096 in fp32 and
bf16, the largest model one device trains, and the planner's memory error.

    .venv/bin/python benchmarks/gpu_check.py                     # on the GPU (cuda:0)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --widths 32 64 --largest-start 64 \\
        --budget-s 60                                            # the same code path, on CPU

1. **Peak**: the device's dense matmul rate in fp32 and bf16 (8192² matmuls, best of 5), the
   denominator of every MFU figure here (vendor peaks are not reached by any kernel).
2. **Step time and MFU**: one conservative-force training step (forward, forces with
   ``create_graph``, loss, backward) of matscale's EGNN at depth 3 on ``model_forward.py``'s
   batch (1,024 atoms, ~43k edges), fp32 and bf16 autocast (geometry stays float32), median of
   a few steps after a warm-up; MFU = matmul FLOPs of the step (``models/size.py``) / time /
   the measured peak of that precision. Peak memory per step (``max_memory_allocated``) and the
   planner's activation estimate for the same step beside it.
3. **Largest model**: widths doubling from ``--largest-start`` until a step runs out of
   memory, then one bisection, with and without per-layer checkpointing + edge chunks
   (8,192, so that the ~11k edges of the batch are cut), a batch of one 256-atom cell, fp32
   weights and AdamW state.
4. Everything into ``benchmarks/results/gpu_check_<device name>.json``, with the device name,
   torch and CUDA versions. A width that fails for any other reason than memory is recorded
   with its error and the script goes on.

``--budget-s`` (default 480 s) bounds when measurements start: each stage starts no new one
past its share of the budget and says so in the JSON; one already running (a large width)
finishes, so the script can overrun by one measurement. The planner's figure beside each step
is for float32 activations: under bf16 it is an upper bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from model_forward import FCC, batch

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.models.size import TRAINING_MULTIPLIER, forward_flops, parameter_count
from matscale.parallel.checkpointing import apply_ac
from matscale.parallel.planner import activation_coefficients


def one_cell(cutoff: float) -> Any:
    """One of ``batch``'s cells: a rattled 256-atom fcc alloy, as a graph."""
    from matscale.data.batch import collate, graph_sample
    from matscale.data.structure import Structure

    rng = np.random.default_rng(0)
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)])
    frac = (grid[:, None] + FCC[None]).reshape(-1, 3)
    s = Structure(
        numbers=rng.choice([28, 29, 46, 79], size=len(frac)),
        positions=frac * 3.7 + rng.normal(0, 0.08, frac.shape),
        cell=np.eye(3) * 4 * 3.7,
        pbc=np.ones(3, bool),
        source="emt",
    )
    return collate([graph_sample(s, cutoff)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Dense matmul TFLOP/s of ``dtype`` on ``device`` (best of 5 n×n products)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def train_step(model: torch.nn.Module, g: Any, autocast: bool, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = predict(model, g, create_graph=True)
        loss = (
            out["energy_net"].float().sum() / len(g.numbers) + out["forces"].float().pow(2).mean()
        )
    loss.backward()


def step_figures(
    cfg: EGNNConfig, g: Any, device: torch.device, bf16: bool, repeats: int, peak: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = EGNN(cfg).to(device)
    train_step(model, g, bf16, device)  # warm-up
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        train_step(model, g, bf16, device)
        sync(device)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    atoms, edges = len(g.numbers), int(g.edge_index.shape[1])
    flops = TRAINING_MULTIPLIER[cfg.force_head] * forward_flops(cfg).total(atoms, edges)
    a_atom, a_edge, l_atom, l_edge = activation_coefficients(cfg, checkpointing=False)
    return {
        "width": cfg.width,
        "precision": "bf16" if bf16 else "fp32",
        "parameters": parameter_count(cfg),
        "seconds_per_step": seconds,
        "atoms_per_s": atoms / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / peak,
        "peak_allocated_GiB": torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else None,
        # the planner's activation + backward transient + state (weights and gradients)
        "planned_GiB": (
            a_atom * atoms + a_edge * edges + l_atom * atoms + l_edge * edges
            + 8.0 * parameter_count(cfg)
        ) / 2**30,
    }  # fmt: skip


def trains(cfg: EGNNConfig, g: Any, device: torch.device, checkpointed: bool) -> str:
    """ "" if one AdamW step of ``cfg`` fits, "oom" if it runs out of memory, else the error."""
    model = optimizer = None
    try:
        model = EGNN(cfg).to(device)
        if checkpointed:
            apply_ac(model, edge_chunk=8192, whole_layers=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_step(model, g, False, device)
        optimizer.step()
        sync(device)
        return ""
    except torch.OutOfMemoryError:
        return "oom"
    except RuntimeError as exc:  # CPU allocators raise plain RuntimeErrors
        return "oom" if "memory" in str(exc).lower() else f"{type(exc).__name__}: {exc}"[:300]
    finally:
        del model, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def largest(
    start: int, g: Any, device: torch.device, checkpointed: bool, deadline: float
) -> dict[str, Any]:
    """The largest width (depth 3) whose training step fits, by doubling then one bisection."""
    tried: dict[int, str] = {}
    width, fits = start, None
    while time.perf_counter() < deadline:
        result = trains(EGNNConfig(width=width, depth=3, heads=("emt",)), g, device, checkpointed)
        tried[width] = result or "fits"
        if result:
            break
        fits, width = width, width * 2
    if fits is not None and tried.get(width) == "oom" and time.perf_counter() < deadline:
        mid = (fits + width) // 2
        result = trains(EGNNConfig(width=mid, depth=3, heads=("emt",)), g, device, checkpointed)
        tried[mid] = result or "fits"
        fits = mid if not result else fits
    return {
        "checkpointed": checkpointed,
        "largest_width": fits,
        "parameters": parameter_count(EGNNConfig(width=fits, depth=3, heads=("emt",)))
        if fits
        else None,
        "tried": tried,
        "stopped_by_budget": time.perf_counter() >= deadline,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--widths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--largest-start", type=int, default=4096)
    p.add_argument("--peak-size", type=int, default=8192, help="matmul size for the peak")
    p.add_argument("--budget-s", type=float, default=480.0)
    args = p.parse_args()
    start = time.perf_counter()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peaks = {
        "fp32": matmul_peak(device, torch.float32, args.peak_size),
        "bf16": matmul_peak(device, torch.bfloat16, args.peak_size),
    }
    print(f"{name}: matmul peak fp32 {peaks['fp32']:.1f}, bf16 {peaks['bf16']:.1f} TFLOP/s")
    g = batch(5.0).to(device)
    rows, skipped = [], []
    for width in args.widths:
        for precision in ("fp32", "bf16"):
            if time.perf_counter() - start > 0.6 * args.budget_s:
                skipped.append(f"width {width} {precision}: past 60 % of the budget")
                continue
            cfg = EGNNConfig(width=width, depth=3, heads=("emt",))
            try:
                r = step_figures(
                    cfg, g, device, precision == "bf16", args.repeats, peaks[precision]
                )
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                skipped.append(f"width {width} {precision}: {type(exc).__name__}: {exc}"[:300])
                continue
            rows.append(r)
            print(f"width {width:>5} {precision}: {r['seconds_per_step']:.3f} s/step, "
                  f"{r['tflops_per_s']:.2f} TFLOP/s, MFU {r['mfu']:.1%}, peak "
                  f"{r['peak_allocated_GiB'] or 0:.1f} GiB "
                  f"(planned {r['planned_GiB']:.1f})")  # fmt: skip
    small = one_cell(5.0).to(device)
    deadline = start + args.budget_s
    half = start + 0.6 * args.budget_s + 0.2 * args.budget_s
    big = [largest(args.largest_start, small, device, False, half),
           largest(args.largest_start, small, device, True, deadline)]  # fmt: skip
    for r in big:
        print(f"largest width {'with' if r['checkpointed'] else 'without'} checkpointing: "
              f"{r['largest_width']} ({r['parameters'] or 0:,} parameters); "
              f"tried {r['tried']}")  # fmt: skip
    write_json(
        f"gpu_check_{name.replace(' ', '_').lower()}",
        {"device": name, "cuda": torch.version.cuda, "matmul_peak_tflops": peaks, "steps": rows,
         "largest": big, "skipped": skipped, "seconds": time.perf_counter() - start},
    )  # fmt: skip


if __name__ == "__main__":
    main()
