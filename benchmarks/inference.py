"""Inference speed and memory of a trained matscale model on one structure of 10 to 100,000
atoms, with MACE (the peer grid's configuration) on the same structures of ~1,000 and ~4,000.

    .venv/bin/python benchmarks/inference.py --model data/runs/demo/model.pt --head emt-metals
    .venv/bin/python benchmarks/inference.py --model ... --device cuda      # on a GPU
    .venv/bin/python benchmarks/inference.py --model ... --sizes 10 100 1000 --repeats 2

The structures: periodic fcc supercells (a = 3.7 Å, rattled by 0.05 Å) randomly occupied by
up to four metals the head knows (Ni Cu Pd Au first), one per size, the same for every model
(seeded by the size). Per size, two phases are timed apart, each as the median of a few
repeats after a warm-up call (fewer repeats for big sizes, so that one phase of one size takes
about ``--budget-s`` seconds): the graph (``potential.graph.sample`` + ``collate``: the vesin
neighbour list and its sort, what every inference path does) and the model step
(``predict_graph``: energy and forces, and stress with ``--stress``; on a GPU that includes
moving the graph there). atoms/s "total" is atoms / (graph + model).

Memory: every size runs in a fresh subprocess (this script with ``--one-size N``), which warms
the model up on a small cell first and then resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``), so the peak RSS rise is what that size's graph and model step
needed and nothing else; bytes/atom is that rise per atom, and a linear fit of the rise against
atoms gives the marginal MiB per 1,000 atoms. On CUDA, ``torch.cuda.max_memory_allocated`` of
the model step is reported too. Sizes whose memory, extrapolated from the ones measured,
would not fit in 70% of the available memory (``--memory-share``) are skipped.

MACE runs in its own environment, ``.venv-mace`` (``benchmarks/peers/setup_mace``): this
script re-invokes itself there with ``--mace-worker``, builds MACE as the peer grid does
(``benchmarks/peers/mace_model.py``, ``MaceSettings()`` defaults: 32 channels, max_L 1,
correlation 3, 2 layers; r_max 5 Å, avg_num_neighbors of the structure's graph, float32) and
times energy + forces the same way, on the same structures, graphs and threads.

``--compile`` also times the model as ``load_potential(path, compile=True)`` gives it (the
forward compiled with dynamic shapes, the forces written out: models/explicit_forces.py) and
reports compiled/eager atoms/s and memory (the compiled model in a fresh process of its own,
compiled during the warm-up) and the largest force difference, or why compiling failed.

Writes ``benchmarks/results/inference_<device>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json

from matscale.data.batch import collate, graph_sample
from matscale.data.structure import Structure
from matscale.train.log import peak_resident_mib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Target atoms per structure of a default run.
SIZES = (10, 100, 1_000, 4_000, 10_000, 30_000, 100_000)
#: Sizes at which MACE runs too (those of a run's sizes closest to these).
MACE_SIZES = (1_000, 4_000)
MACE_PYTHON = ROOT / ".venv-mace" / "bin" / "python"
MACE_R_MAX = 5.0  # Å, the peer grid's cutoff
#: Metals picked first when the head knows them (the peer checks' alloy: Ni Cu Pd Au).
PREFERRED = (28, 29, 46, 79)
LATTICE = 3.7  # Å, fcc
RATTLE = 0.05  # Å
FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
#: One timed sample lasts at least this long (small structures loop the call).
MIN_SAMPLE_S = 0.05
#: Share of the available memory a size may be predicted to need before it is skipped.
MEMORY_SHARE = 0.7
RESULT = "RESULT "  # prefix of a worker's JSON line on stdout


# ---------------------------------------------------------------- structures


def supercell_shape(n_atoms: int) -> tuple[int, int, int]:
    """Repeats (a ≤ b ≤ c) of the 4-atom cubic fcc cell with 4abc closest to ``n_atoms`` (in
    log), preferring near-cubic shapes."""
    cells = max(n_atoms / 4, 1.0)
    top = math.ceil(cells ** (1 / 3)) + 2
    best: tuple[float, tuple[int, int, int]] | None = None
    for a in range(1, top + 1):
        for b in range(a, 2 * top + 1):
            c = max(b, round(cells / (a * b)))
            for cc in (c, c + 1):
                if cc < b:
                    continue
                score = abs(math.log(4 * a * b * cc / n_atoms)) + 0.1 * math.log(cc / a)
                if best is None or score < best[0]:
                    best = (score, (a, b, cc))
    assert best is not None
    return best[1]


def alloy(n_atoms: int, elements: list[int], seed: int = 0, source: str = "") -> Structure:
    """A periodic fcc random alloy of about ``n_atoms`` atoms of ``elements``, rattled; the
    same structure for the same (n_atoms, elements, seed) in any process."""
    shape = supercell_shape(n_atoms)
    grid = np.indices(shape).reshape(3, -1).T
    frac = (grid[:, None, :] + FCC[None]).reshape(-1, 3)
    rng = np.random.default_rng([seed, n_atoms])
    return Structure(
        numbers=rng.choice(np.asarray(elements, dtype=np.int64), size=len(frac)),
        positions=frac * LATTICE + rng.normal(0.0, RATTLE, frac.shape),
        cell=np.diag(np.asarray(shape, dtype=np.float64) * LATTICE),
        pbc=np.ones(3, dtype=bool),
        source=source,
        key=f"fcc-alloy-{'x'.join(map(str, shape))}",
    )


def pick_elements(known: tuple[int, ...], count: int = 4) -> list[int]:
    """Up to ``count`` of the head's elements, the peer checks' metals first."""
    first = [z for z in PREFERRED if z in known]
    rest = [z for z in sorted(known) if z not in first]
    return sorted((first + rest)[:count])


# ---------------------------------------------------------------- measuring


def _proc_status() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in MiB (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def rss_mib() -> float:
    """Current resident memory (MiB)."""
    try:
        return _proc_status()["VmRSS"]
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mib() -> float:
    """Peak resident memory since start or the last :func:`reset_peak` (MiB)."""
    return peak_resident_mib()


def reset_peak() -> bool:
    """Set the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); False if refused."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_mib() -> float | None:
    """MemAvailable (MiB), or None where /proc/meminfo is absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], repeats: int, budget_s: float, first: float | None = None
) -> dict[str, float]:
    """Median seconds per call of ``fn`` after a warm-up call (one here, or one the caller
    made that took ``first`` seconds): up to ``repeats`` samples, fewer when they would take
    over ``budget_s``; a sample loops short calls to last at least ``MIN_SAMPLE_S``."""
    if first is None:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    inner = max(1, min(100, int(MIN_SAMPLE_S / max(first, 1e-6))))
    n = max(1, min(repeats, int(budget_s / max(first * inner, 1e-9))))
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return {
        "seconds": float(np.median(samples)),
        "first_call_s": first,
        "repeats": n,
        "calls_per_repeat": inner,
        "spread": float((max(samples) - min(samples)) / np.median(samples)),
    }


def memory_and_speed(
    build: Callable[[], Any],
    step: Callable[[Any], Any],
    n_atoms: int,
    device: torch.device,
    repeats: int,
    budget_s: float,
) -> tuple[Any, dict[str, Any]]:
    """Peak memory, then speed, of the graph phase ``build()`` and the model phase
    ``step(graph)``; returns the graph and the row's figures. The first call of each phase,
    where memory is measured, is its warm-up."""
    cuda = device.type == "cuda"
    reset = reset_peak()
    base = rss_mib()
    t0 = time.perf_counter()
    graph = build()
    graph_first = time.perf_counter() - t0
    graph_peak = peak_mib()
    reset_peak()
    held = rss_mib()  # the graph is alive
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    step(graph)
    sync(device)
    model_first = time.perf_counter() - t0
    model_peak = peak_mib()
    row: dict[str, Any] = {
        "rss_before_mib": base,
        "graph_rise_mib": graph_peak - base,
        "model_rise_mib": model_peak - held,
        # what this size needed: the graph, then the model step with the graph alive
        "rss_rise_mib": max(graph_peak, model_peak) - base,
        "peak_reset": reset,
    }
    row["bytes_per_atom"] = row["rss_rise_mib"] * 2**20 / n_atoms
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        row["cuda_peak_allocated_mib"] = peak / 2**20
        row["cuda_rise_allocated_mib"] = (peak - cuda_base) / 2**20
        row["cuda_bytes_per_atom"] = (peak - cuda_base) / n_atoms
    g = timed(build, repeats, budget_s, first=graph_first)
    m = timed(lambda: (step(graph), sync(device)), repeats, budget_s, first=model_first)
    row.update(
        graph_ms=1e3 * g["seconds"],
        model_ms=1e3 * m["seconds"],
        total_ms=1e3 * (g["seconds"] + m["seconds"]),
        atoms_per_s_model=n_atoms / m["seconds"],
        atoms_per_s_total=n_atoms / (g["seconds"] + m["seconds"]),
        graph_timing=g,
        model_timing=m,
    )
    row["peak_rss_mib"] = peak_mib() if not reset else max(graph_peak, model_peak)
    return graph, row


def measure_matscale(
    potential: Any,
    head_index: int,
    s: Structure,
    *,
    repeats: int = 5,
    budget_s: float = 8.0,
    stress: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """One row: graph and model time, atoms/s and memory of ``potential`` on ``s``; and the
    graph it was measured on."""
    from matscale.calc.inference import predict_graph

    device = potential.device

    def build() -> Any:
        return collate([potential.graph.sample(s, head_index)])

    def step_with(p: Any) -> Callable[[Any], Any]:
        return lambda graph: predict_graph(p, graph, forces=True, stress=stress)

    graph, row = memory_and_speed(build, step_with(potential), s.n_atoms, device, repeats, budget_s)
    edges = int(graph.edge_index.shape[1])
    row = {
        "model": "matscale",
        "atoms": s.n_atoms,
        "edges": edges,
        "edges_per_atom": edges / s.n_atoms,
        "cell": s.key,
        "outputs": "energy+forces+stress" if stress else "energy+forces",
        **row,
    }
    return graph, row


def compiled_summary(compiled: dict[str, Any], eager: dict[str, Any]) -> dict[str, Any] | str:
    """The compiled worker's row against the eager one's: speed and memory ratios, compile
    time, largest force difference; "failed: reason" if it did not run."""
    if "error" in compiled:
        return f"failed: {compiled['error']}"
    return {
        "model_ms": compiled["model_ms"],
        "atoms_per_s_model": compiled["atoms_per_s_model"],
        "ratio_compiled_over_eager": eager["model_ms"] / compiled["model_ms"],
        "compile_s": compiled["compile_s"],
        "model_rise_mib": compiled["model_rise_mib"],
        "rss_rise_mib": compiled["rss_rise_mib"],
        "rss_rise_over_eager": compiled["rss_rise_mib"] / eager["rss_rise_mib"],
        "max_force_difference_eV_per_A": compiled["max_force_difference_eV_per_A"],
        "timing": compiled["model_timing"],
    }


def matscale_worker(args: argparse.Namespace) -> dict[str, Any]:
    """``--one-size N``: one row, in a fresh process (so the memory figures are this size's)."""
    from matscale.calc.model_file import load_potential

    torch.set_num_threads(args.threads)
    compile = args.compiled_worker
    potential = load_potential(
        args.model, device=args.device, edge_chunk=args.edge_chunk, compile=compile
    )
    head = potential.graph.head_index(args.head)
    elements = args.elements or pick_elements(potential.graph.elements[head])
    # warm-up on a small cell: one-time allocations (thread pools, kernels) and, compiled,
    # the compilation (dynamic shapes: the measured size reuses it) stay out of the figures
    t0 = time.perf_counter()
    measure_matscale(potential, head, alloy(32, elements, args.seed), repeats=1, budget_s=0.0)
    warm_up_s = time.perf_counter() - t0
    s = alloy(args.one_size, elements, args.seed)
    graph, row = measure_matscale(
        potential, head, s, repeats=args.repeats, budget_s=args.budget_s, stress=args.stress
    )
    if compile:  # against the eager model on the same graph, after the figures
        from matscale.calc.inference import predict_graph

        eager = load_potential(args.model, device=args.device)
        ours, theirs = predict_graph(potential, graph), predict_graph(eager, graph)
        row["compile_s"] = warm_up_s
        row["max_force_difference_eV_per_A"] = float(
            (ours["forces"] - theirs["forces"]).abs().max()
        )
    return row


def mace_worker(args: argparse.Namespace) -> dict[str, Any]:
    """``--mace-worker --one-size N`` (in ``.venv-mace``): MACE's row on the same structure."""
    from importlib.metadata import version

    sys.path.insert(0, str(HERE / "peers"))
    from mace_model import MaceSettings, build_mace, parameter_count

    from matscale.models.physics import predict

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    elements = args.elements
    s = alloy(args.one_size, elements, args.seed)
    graph = collate([graph_sample(s, MACE_R_MAX)])
    torch.manual_seed(0)
    settings = MaceSettings(max_L=args.mace_max_l)
    model = build_mace(
        settings,
        atomic_numbers=elements,
        atomic_energies_eV={z: 0.0 for z in elements},
        avg_num_neighbors=graph.edge_index.shape[1] / s.n_atoms,
        r_max=MACE_R_MAX,
        scale=1.0,
    )
    parameters = parameter_count(model)
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def build() -> Any:
        return collate([graph_sample(s, MACE_R_MAX)])

    def step(g: Any) -> Any:
        # the same path as train_peer's inference speed: predict keeps MACE's own forces
        out = predict(model, g.to(device), forces=True)
        return {k: v.detach() for k, v in out.items()}

    small = alloy(32, elements, args.seed)
    memory_and_speed(lambda: collate([graph_sample(small, MACE_R_MAX)]), step, 32, device, 1, 0)
    _, row = memory_and_speed(build, step, s.n_atoms, device, args.repeats, args.budget_s)
    edges = int(graph.edge_index.shape[1])
    return {
        "model": "mace",
        "atoms": s.n_atoms,
        "edges": edges,
        "edges_per_atom": edges / s.n_atoms,
        "cell": s.key,
        "outputs": "energy+forces",
        **row,
        "parameters": parameters,
        "settings": {k: v for k, v in vars(settings).items()} | {"r_max": MACE_R_MAX},
        "mace_torch": version("mace-torch"),
        "torch": torch.__version__,
    }


# ---------------------------------------------------------------- the run


def run_worker(cmd: list[str], timeout: float = 900) -> dict[str, Any]:
    """Run a worker; its row (the RESULT line of stdout) or ``{"error": ...}``."""
    env = {**os.environ, "OMP_NUM_THREADS": cmd[cmd.index("--threads") + 1]}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def linear_fit(rows: list[dict[str, Any]], key: str = "rss_rise_mib") -> dict[str, Any] | None:
    """Least-squares line of ``key`` (MiB) against atoms: slope per 1,000 atoms, intercept,
    R² and the number of points (None with fewer than two)."""
    pts = [(r["atoms"], r[key]) for r in rows if r.get(key) is not None]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=np.float64).T
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return {
        "of": key,
        "mib_per_1k_atoms": 1e3 * float(slope),
        "intercept_mib": float(intercept),
        "r2": r2,
        "points": len(pts),
    }


def ratios(rows: list[dict[str, Any]], mace_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """matscale / MACE atoms/s (model only and total) at the sizes both ran."""
    mine = {r["atoms"]: r for r in rows if "error" not in r}
    out = []
    for m in mace_rows:
        r = mine.get(m.get("atoms"))
        if r is None or "error" in m:
            continue
        out.append(
            {
                "atoms": r["atoms"],
                "model": r["atoms_per_s_model"] / m["atoms_per_s_model"],
                "total": r["atoms_per_s_total"] / m["atoms_per_s_total"],
                "memory": r["rss_rise_mib"] / m["rss_rise_mib"] if m["rss_rise_mib"] > 0 else None,
            }
        )
    return out


def payload(
    rows: list[dict[str, Any]],
    mace_rows: list[dict[str, Any]],
    *,
    model_path: str,
    head: str,
    parameters: int,
    elements: list[int],
    threads: int,
    device: str,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The JSON written by a run (besides the machine description ``write_json`` adds)."""
    ok = [r for r in rows if "error" not in r and not r.get("skipped")]
    fits = {"rss": linear_fit(ok)}
    if any(r.get("cuda_rise_allocated_mib") is not None for r in ok):
        fits["cuda"] = linear_fit(ok, "cuda_rise_allocated_mib")
    return {
        "command": " ".join(sys.argv),
        "model_file": model_path,
        "head": head,
        "parameters": parameters,
        "elements": elements,
        "structure": {
            "kind": "fcc random alloy, periodic",
            "lattice_A": LATTICE,
            "rattle_A": RATTLE,
        },
        "threads": threads,
        "device": device,
        "torch": torch.__version__,
        "rows": rows,
        "mace": mace_rows,
        "ratios_matscale_over_mace": ratios(rows, mace_rows),
        "memory_fit": fits,
        "notes": notes or [],
    }


def _fmt(r: dict[str, Any], label: str) -> str:
    if "error" in r or r.get("skipped"):
        why = r.get("error") or r.get("skipped")
        return f"{label:<9}{r.get('atoms', r.get('target', '?')):>8}  {why}"
    cuda = r.get("cuda_rise_allocated_mib")
    line = (
        f"{label:<9}{r['atoms']:>8,} {r['edges']:>11,} {r['graph_ms']:>10.2f} "
        f"{r['model_ms']:>10.2f} {r['atoms_per_s_model']:>12,.0f} {r['atoms_per_s_total']:>12,.0f} "
        f"{r['rss_rise_mib']:>9.1f} {r['bytes_per_atom']:>10,.0f}"
    )
    if cuda is not None:
        line += f" {cuda:>9.1f}"
    compiled = r.get("compiled")
    if isinstance(compiled, dict):
        line += f"  compiled {compiled['ratio_compiled_over_eager']:.2f}x"
        line += f", memory {compiled['rss_rise_over_eager']:.2f}x"
    elif compiled:
        line += f"  compile {compiled[:60]}"
    return line


def print_table(result: dict[str, Any]) -> None:
    rows, mace_rows = result["rows"], result["mace"]
    cuda = any(r.get("cuda_rise_allocated_mib") is not None for r in rows + mace_rows)
    outputs = next((r["outputs"] for r in rows if "outputs" in r), "energy+forces")
    print(
        f"\n{result['model_file']} (head {result['head']}, {result['parameters']:,} parameters), "
        f"{result['device']}, {result['threads']} threads; model step = {outputs}"
    )
    head = (
        f"{'model':<9}{'atoms':>8} {'edges':>11} {'graph ms':>10} {'model ms':>10} "
        f"{'atoms/s mdl':>12} {'atoms/s tot':>12} {'+RSS MiB':>9} {'B/atom':>10}"
    )
    print(head + (f" {'+GPU MiB':>9}" if cuda else ""))
    for r in rows:
        print(_fmt(r, "matscale"))
    for r in mace_rows:
        print(_fmt(r, "mace"))
    built = next((r for r in mace_rows if "settings" in r), None)
    if built:
        st = built["settings"]
        print(
            f"MACE {built['mace_torch']}: {st['num_channels']} channels, max_L {st['max_L']}, "
            f"correlation {st['correlation']}, {st['num_interactions']} layers, r_max "
            f"{st['r_max']:g} Å, {built['parameters']:,} parameters"
        )
    for q in result["ratios_matscale_over_mace"]:
        mem = f", memory {q['memory']:.2f}x" if q["memory"] is not None else ""
        print(
            f"matscale / MACE at {q['atoms']:,} atoms: atoms/s {q['model']:.1f}x (model), "
            f"{q['total']:.1f}x (graph + model){mem}"
        )
    for name, fit in result["memory_fit"].items():
        if fit:
            print(
                f"memory fit ({name}): {fit['mib_per_1k_atoms']:.2f} MiB per 1k atoms "
                f"+ {fit['intercept_mib']:.1f} MiB, R² {fit['r2']:.4f} ({fit['points']} sizes)"
            )
    for note in result["notes"]:
        print(note)


def closest(sizes: list[int], targets: tuple[int, ...]) -> list[int]:
    """For each target, the size closest to it in log, if within a factor 1.5."""
    out = []
    for t in targets:
        near = min(sizes, key=lambda n: abs(math.log(n / t)), default=None)
        if near is not None and abs(math.log(near / t)) < math.log(1.5) and near not in out:
            out.append(near)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/runs/demo/model.pt", help="a matscale model.pt")
    ap.add_argument("--head", default=None, help="head (level of theory); default: the only one")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="target atoms")
    ap.add_argument("--max-atoms", type=int, default=None, help="skip larger sizes")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per phase (at most)")
    ap.add_argument("--budget-s", type=float, default=8.0, help="seconds per phase and size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stress", action="store_true", help="the model step computes stress too")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd inference")
    ap.add_argument("--elements", type=int, nargs="+", default=None, help="Z of the alloy")
    ap.add_argument(
        "--edge-chunk",
        type=int,
        default=0,
        help="load_potential(edge_chunk=N): edge terms in checkpointed chunks (less memory)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mace-sizes", type=int, nargs="*", default=list(MACE_SIZES))
    ap.add_argument("--no-mace", action="store_true", help="skip MACE")
    ap.add_argument(
        "--mace-max-l",
        type=int,
        choices=[0, 1],
        default=1,
        help="MACE's max_L (1: the peers grid's; 0: invariant MACE, ~3x cheaper per step)",
    )
    ap.add_argument(
        "--memory-share",
        type=float,
        default=MEMORY_SHARE,
        help="skip a size predicted to need more than this share of the available memory",
    )
    ap.add_argument("--json", default=None, help="results name (default inference_<device>)")
    ap.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mace-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compiled-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one_size is not None:
        row = mace_worker(args) if args.mace_worker else matscale_worker(args)
        print(RESULT + json.dumps(row), flush=True)
        return

    from matscale.calc.model_file import load_potential

    potential = load_potential(args.model)
    head = potential.graph.head_index(args.head)
    head_name = potential.graph.heads[head]
    elements = args.elements or pick_elements(potential.graph.elements[head])
    parameters = sum(p.numel() for p in potential.model.parameters())
    del potential
    sizes = sorted({n for n in args.sizes if args.max_atoms is None or n <= args.max_atoms})
    common = [
        "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats),
        "--budget-s", str(args.budget_s), "--seed", str(args.seed),
        "--edge-chunk", str(args.edge_chunk), "--mace-max-l", str(args.mace_max_l),
        "--elements", *map(str, elements),
    ]  # fmt: skip
    mine = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, *common]
    mine += ["--head", head_name] + ["--stress"] * args.stress
    print(
        f"{args.model}: head {head_name}, elements {elements}, {parameters:,} parameters, "
        f"{args.threads} threads, {args.device}; sizes {sizes}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for n in sizes:
        need = predicted_mib(rows, alloy_atoms(n))
        free = available_mib()
        if need is not None and free is not None and need > args.memory_share * free:
            rows.append(
                {
                    "target": n,
                    "skipped": f"needs ~{need:,.0f} MiB (extrapolated), {free:,.0f} MiB available",
                }
            )
            print(_fmt(rows[-1], "matscale"), flush=True)
            continue
        row = run_worker([*mine, "--one-size", str(n)])
        row.setdefault("target", n)
        if args.compile and "error" not in row:  # in a fresh process too: its own memory
            compiled = run_worker([*mine, "--one-size", str(n), "--compiled-worker"])
            row["compiled"] = compiled_summary(compiled, row)
        rows.append(row)
        print(_fmt(row, "matscale"), flush=True)
        if "error" in row:
            break  # a bigger size would fail the same way

    notes: list[str] = []
    mace_rows: list[dict[str, Any]] = []
    done = [r["target"] for r in rows if "error" not in r and not r.get("skipped")]
    mace_at = closest(done, tuple(args.mace_sizes))
    if args.no_mace or not mace_at:
        pass
    elif not MACE_PYTHON.exists():
        notes.append(
            f"MACE skipped: {MACE_PYTHON} is missing; make it with benchmarks/peers/setup_mace"
        )
    else:
        cmd = [str(MACE_PYTHON), str(Path(__file__).resolve()), "--mace-worker", *common]
        for n in mace_at:
            need = predicted_mib(mace_rows, alloy_atoms(n))
            free = available_mib()
            if need is not None and free is not None and need > args.memory_share * free:
                mace_rows.append({"target": n, "skipped": f"needs ~{need:,.0f} MiB"})
                print(_fmt(mace_rows[-1], "mace"), flush=True)
                continue
            row = run_worker([*cmd, "--one-size", str(n)])
            row.setdefault("target", n)
            mace_rows.append(row)
            print(_fmt(row, "mace"), flush=True)

    result = payload(
        rows,
        mace_rows,
        model_path=args.model,
        head=head_name,
        parameters=parameters,
        elements=elements,
        threads=args.threads,
        device=args.device,
        notes=notes,
    )
    print_table(result)
    write_json(args.json or f"inference_{args.device}", result)


def alloy_atoms(n: int) -> int:
    """Atoms of the structure made for target ``n``."""
    a, b, c = supercell_shape(n)
    return 4 * a * b * c


def predicted_mib(rows: list[dict[str, Any]], atoms: int) -> float | None:
    """Memory a structure of ``atoms`` would need, from the largest bytes/atom of the two
    biggest sizes measured (small sizes are dominated by fixed costs), plus 20%."""
    ok = sorted((r for r in rows if "bytes_per_atom" in r), key=lambda r: r["atoms"])[-2:]
    if not ok or ok[-1]["atoms"] < 1000:
        return None
    return 1.2 * atoms * max(r["bytes_per_atom"] for r in ok) / 2**20


if __name__ == "__main__":
    main()
