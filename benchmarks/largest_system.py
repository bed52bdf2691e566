"""The largest structure one process can compute (energy, forces, stress) within a memory cap,
per model size, with and without edge chunks, eager or compiled.

Per width (the model file's architecture at that width, depth and heads kept, readouts at their
default width, untrained: memory does not depend on the weights' values) and per edge-chunk
setting, each size in ``--sizes`` runs in a fresh process of this script (``--worker``): it
loads the model, builds a periodic fcc alloy of ~N atoms (``inference.alloy``), computes its
energy, forces and stress once through the ASE-free inference path (graph, then
``predict_graph``), and reports the process's high-water mark of resident memory (``VmHWM``:
imports, weights, graph and the step all counted, as a memory limit would count them) and the
seconds. The peaks are fitted as a line in the atom count (R² printed) and the line gives the
largest N under each cap in ``--caps-gib``. ``--verify`` then runs the largest predicted
structure for the smallest cap (times ``--verify-share``, 0.9) and reports its measured peak
against the cap: the prediction checked, not assumed. ``--compile`` adds a setting per width:
the model as ``load_potential(path, compile=True)`` gives it (forces written out, no autograd
graph kept; its first call compiles, and the peak counts that too).

    .venv/bin/python benchmarks/largest_system.py --model data/runs/demo/model.pt \\
        --head emt-metals --widths 64 128 256 --caps-gib 4 8 16 --verify

Writes ``benchmarks/results/<--out>.json`` (``largest_system.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from inference import RESULT, linear_fit, run_worker


def at_width(model: Path, width: int, out: Path) -> Path:
    """A model file like ``model`` (depth, heads, cutoff, transform) at ``width``, readouts at
    their default width, freshly initialised (seeded)."""
    from matscale.calc.model_file import read_model_file
    from matscale.config import from_dict
    from matscale.models.egnn import EGNN, EGNNConfig, upgrade_config

    blob = read_model_file(model)
    config = {**upgrade_config(blob["model_config"]), "width": width, "readout_width": 0}
    torch.manual_seed(0)
    fresh = EGNN(from_dict(EGNNConfig, config))
    blob = {**blob, "model_config": config, "state_dict": fresh.state_dict(), "metrics": {}}
    torch.save(blob, out)
    return out


def parameters(model: Path) -> int:
    """Non-embedding parameters of a model file's architecture (the study's N)."""
    from matscale.calc.model_file import read_model_file
    from matscale.config import from_dict
    from matscale.models.egnn import EGNNConfig, upgrade_config
    from matscale.models.size import non_embedding_parameters

    config = upgrade_config(read_model_file(model)["model_config"])
    return non_embedding_parameters(from_dict(EGNNConfig, config))


def worker(model: Path, head: str, atoms: int, edge_chunk: int, compile: bool) -> dict[str, Any]:
    """``--worker``: one structure of ~``atoms`` atoms, energy + forces + stress, once."""
    import time

    from inference import alloy, pick_elements

    from matscale.calc.inference import predict_graph
    from matscale.calc.model_file import load_potential
    from matscale.data.batch import collate
    from matscale.train.log import peak_resident_mib

    potential = load_potential(model, edge_chunk=edge_chunk, compile=compile)
    index = potential.graph.head_index(head)
    s = alloy(atoms, pick_elements(potential.graph.elements[index]))
    started = time.perf_counter()
    graph = collate([potential.graph.sample(s, index)])
    predict_graph(potential, graph, forces=True, stress=True)
    seconds = time.perf_counter() - started
    return {"atoms": s.n_atoms, "edges": int(graph.edge_index.shape[1]),
            "peak_rss_mib": peak_resident_mib(), "seconds": seconds}  # fmt: skip


def measure(
    model: Path, head: str, atoms: int, edge_chunk: int, threads: int, compile: bool = False
) -> dict[str, Any]:
    """One size in a fresh process (this script's ``--worker``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", str(model),
           "--head", head, "--atoms", str(atoms), "--edge-chunk", str(edge_chunk),
           "--threads", str(threads)] + ["--compiled"] * compile  # fmt: skip
    return run_worker(cmd, timeout=3600)


def largest(fit: dict[str, Any], cap_mib: float) -> int | None:
    """Atoms at which the fitted peak-memory line reaches ``cap_mib`` (0: the fixed cost alone
    is over it); None when the line does not rise (the fit says nothing about a limit)."""
    slope = fit["mib_per_1k_atoms"] / 1e3
    if slope <= 0:
        return None
    return max(0, round((cap_mib - fit["intercept_mib"]) / slope))


def one_setting(
    model: Path, width: int, chunk: int, compile: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """The sizes measured for one width, edge chunk and compile setting, their line, the
    largest atoms per cap, and (``--verify``) the largest for the smallest cap run and
    measured."""
    points = []
    name = f"width {width} " + ("compiled" if compile else f"chunk {chunk}")
    for n in args.sizes:
        r = measure(model, args.head, n, chunk, args.threads, compile)
        if "error" in r:
            print(f"{name} {n}: {r['error']}", flush=True)
            break
        points.append(r)
        print(f"{name}: {r['atoms']:,} atoms, {r['peak_rss_mib']:,.0f} MiB, "
              f"{r['seconds']:.1f} s", flush=True)  # fmt: skip
    fit = linear_fit(points, key="peak_rss_mib")
    row: dict[str, Any] = {"width": width, "parameters": parameters(model), "edge_chunk": chunk,
                           "compiled": compile, "points": points, "fit": fit}  # fmt: skip
    if not fit:
        return row
    row["largest_atoms"] = {f"{c:g}": largest(fit, c * 1024) for c in args.caps_gib}
    cap = min(args.caps_gib)
    most = row["largest_atoms"][f"{cap:g}"]
    if args.verify and most:
        target = int(args.verify_share * most)
        r = measure(model, args.head, target, chunk, args.threads, compile)
        keep = ("atoms", "peak_rss_mib", "seconds", "error")
        within = "error" not in r and r["peak_rss_mib"] <= cap * 1024
        row["verified"] = {"cap_gib": cap, "target": target, "within_cap": within,
                           **{k: r.get(k) for k in keep}}  # fmt: skip
    return row


def _atoms(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("data/runs/demo/model.pt"))
    p.add_argument("--head", default="emt-metals")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 24000],
                   help="atoms of the measured structures (three or more: the line's R² means "
                   "something)")  # fmt: skip
    p.add_argument("--edge-chunks", type=int, nargs="+", default=[0, 16384],
                   help="0: every edge at once; N: edge terms N at a time, recomputed")  # fmt: skip
    p.add_argument("--caps-gib", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verify", action="store_true", help="run the largest for the smallest cap")
    p.add_argument("--verify-share", type=float, default=0.9)
    p.add_argument("--compile", action="store_true", help="also the compiled model, per width")
    p.add_argument("--out", default="largest_system", help="results name under results/")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--atoms", type=int, help=argparse.SUPPRESS)
    p.add_argument("--edge-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        row = worker(args.model, args.head, args.atoms, args.edge_chunk, args.compiled)
        print(RESULT + json.dumps(row), flush=True)
        return

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            model = at_width(args.model, width, Path(tmp) / f"w{width}.pt")
            settings = [(chunk, False) for chunk in args.edge_chunks] + [(0, True)] * args.compile
            rows += [one_setting(model, width, c, compiled, args) for c, compiled in settings]

    caps = [f"{c:g}" for c in args.caps_gib]
    print(f"\n{'width':>6}{'params':>12}{'chunk':>9}{'MiB/1k atoms':>14}{'R²':>7}"
          + "".join(f"{c + ' GiB':>12}" for c in caps) + "  verified (smallest cap)")  # fmt: skip
    nan = float("nan")
    for r in rows:
        fit, v = r["fit"] or {}, r.get("verified") or {}
        check = (f"{v['atoms']:,} at {v['peak_rss_mib']:,.0f} MiB "
                 + ("(within)" if v["within_cap"] else "(OVER)")
                 if v.get("peak_rss_mib") else v.get("error", "—"))  # fmt: skip
        setting = "compiled" if r.get("compiled") else str(r["edge_chunk"])
        print(f"{r['width']:>6}{r['parameters']:>12,}{setting:>9}"
              f"{fit.get('mib_per_1k_atoms', nan):>14.1f}{fit.get('r2', nan):>7.3f}"
              + "".join(f"{_atoms(r.get('largest_atoms', {}).get(c)):>12}" for c in caps)
              + f"  {check}")  # fmt: skip
    write_json(
        args.out,
        {"model": str(args.model), "head": args.head, "threads": args.threads,
         "outputs": "energy+forces+stress", "caps_gib": args.caps_gib, "rows": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
