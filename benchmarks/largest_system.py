"""The largest structure one process can compute (energy, forces, stress) within a memory cap,
per model size, with and without edge chunks.

Per width (the model file's architecture at that width, depth and heads kept, untrained: memory
does not depend on the weights' values) and per edge-chunk setting, each size in ``--sizes``
runs in a fresh process (``benchmarks/inference.py --one-size``: a periodic fcc alloy of ~N
atoms, energy + forces + stress); the whole process's peak RSS is fitted as a line in the atom
count, and the line gives the largest N under each cap in ``--caps-gib``. ``--verify`` then
runs the largest predicted structure for the smallest cap (times ``--verify-share``, 0.9) and
reports its measured peak against the cap: the prediction checked, not assumed.

    .venv/bin/python benchmarks/largest_system.py --model data/runs/demo/model.pt \\
        --head emt-metals --widths 64 128 256 --caps-gib 4 8 16 --verify

Writes ``benchmarks/results/largest_system.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json
from inference import linear_fit, run_worker

INFERENCE = Path(__file__).resolve().parent / "inference.py"


def at_width(model: Path, width: int, out: Path) -> Path:
    """A model file like ``model`` (depth, heads, cutoff, transform) at ``width``, freshly
    initialised (seeded)."""
    from matscale.calc.model_file import read_model_file
    from matscale.config import from_dict
    from matscale.models.egnn import EGNN, EGNNConfig, upgrade_config

    blob = read_model_file(model)
    config = {**upgrade_config(blob["model_config"]), "width": width}
    torch.manual_seed(0)
    fresh = EGNN(from_dict(EGNNConfig, config))
    blob = {**blob, "model_config": config, "state_dict": fresh.state_dict(), "metrics": {}}
    torch.save(blob, out)
    return out


def parameters(model: Path) -> int:
    """Parameters of a model file's weights."""
    from matscale.calc.model_file import read_model_file

    return sum(int(t.numel()) for t in read_model_file(model)["state_dict"].values())


def measure(model: Path, head: str, atoms: int, edge_chunk: int, threads: int) -> dict[str, Any]:
    """One size in a fresh process: ``inference.py``'s row (peak RSS, seconds, edges)."""
    cmd = [sys.executable, str(INFERENCE), "--model", str(model), "--head", head,
           "--one-size", str(atoms), "--threads", str(threads), "--repeats", "1",
           "--budget-s", "0", "--edge-chunk", str(edge_chunk), "--stress"]  # fmt: skip
    return run_worker(cmd, timeout=3600)


def largest(fit: dict[str, Any], cap_mib: float) -> int:
    """Atoms at which the fitted peak RSS line reaches ``cap_mib`` (0 if never)."""
    slope = fit["mib_per_1k_atoms"] / 1e3
    return max(0, int((cap_mib - fit["intercept_mib"]) / slope)) if slope > 0 else 0


def one_setting(model: Path, width: int, chunk: int, args: argparse.Namespace) -> dict[str, Any]:
    """The sizes measured for one width and edge chunk, their line, the largest atoms per cap,
    and (``--verify``) the largest for the smallest cap run and measured."""
    points = []
    for n in args.sizes:
        r = measure(model, args.head, n, chunk, args.threads)
        if "error" in r:
            print(f"width {width} chunk {chunk} {n}: {r['error']}", flush=True)
            break
        points.append({k: r[k] for k in ("atoms", "peak_rss_mib", "edges", "total_ms")})
        print(f"width {width} chunk {chunk}: {r['atoms']:,} atoms, {r['peak_rss_mib']:,.0f} MiB, "
              f"{r['total_ms'] / 1e3:.1f} s", flush=True)  # fmt: skip
    fit = linear_fit(points, key="peak_rss_mib")
    row: dict[str, Any] = {"width": width, "parameters": parameters(model), "edge_chunk": chunk,
                           "points": points, "fit": fit}  # fmt: skip
    if not fit:
        return row
    row["largest_atoms"] = {f"{c:g}": largest(fit, c * 1024) for c in args.caps_gib}
    if args.verify:
        cap = min(args.caps_gib)
        target = int(args.verify_share * row["largest_atoms"][f"{cap:g}"])
        r = measure(model, args.head, target, chunk, args.threads)
        keep = ("atoms", "peak_rss_mib", "total_ms", "error")
        within = "error" not in r and r["peak_rss_mib"] <= cap * 1024
        row["verified"] = {"cap_gib": cap, "target": target, "within_cap": within,
                           **{k: r.get(k) for k in keep}}  # fmt: skip
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("data/runs/demo/model.pt"))
    p.add_argument("--head", default="emt-metals")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000])
    p.add_argument("--edge-chunks", type=int, nargs="+", default=[0, 16384],
                   help="0: every edge at once; N: edge terms N at a time, recomputed")  # fmt: skip
    p.add_argument("--caps-gib", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verify", action="store_true", help="run the largest for the smallest cap")
    p.add_argument("--verify-share", type=float, default=0.9)
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            model = at_width(args.model, width, Path(tmp) / f"w{width}.pt")
            rows += [one_setting(model, width, chunk, args) for chunk in args.edge_chunks]

    caps = [f"{c:g}" for c in args.caps_gib]
    print(f"\n{'width':>6}{'params':>12}{'chunk':>7}{'MiB/1k atoms':>14}"
          + "".join(f"{c + ' GiB':>12}" for c in caps) + f"{'verified':>26}")  # fmt: skip
    for r in rows:
        fit, v = r["fit"] or {}, r.get("verified") or {}
        check = (f"{v['atoms']:,} at {v['peak_rss_mib']:,.0f} MiB "
                 + ("(within)" if v["within_cap"] else "(OVER)")
                 if v.get("peak_rss_mib") else v.get("error", "—"))  # fmt: skip
        print(f"{r['width']:>6}{r['parameters']:>12,}{r['edge_chunk']:>7}"
              f"{fit.get('mib_per_1k_atoms', float('nan')):>14.1f}"
              + "".join(f"{r.get('largest_atoms', {}).get(c, 0):>12,}" for c in caps)
              + f"{check:>26}")  # fmt: skip
    write_json(
        "largest_system",
        {"model": str(args.model), "head": args.head, "threads": args.threads,
         "outputs": "energy+forces+stress", "caps_gib": args.caps_gib, "rows": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
