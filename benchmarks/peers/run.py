"""matscale against its peers: accuracy per CPU-minute and inference speed, side by side.

    .venv/bin/python benchmarks/peers/run.py                        # the whole grid, 10 min each
    .venv/bin/python benchmarks/peers/run.py --minutes 4 --models matscale mace --sources emt

For each source of the default data (EMT metals, xTB molecules) and each model, one
``train_peer.py`` process trains for the same budget of training seconds on the same split
with the same batches (float32, 2 threads) and reports validation errors over time, the error
on a family held out of training, inference atoms/s and peak memory. Models:

- ``matscale``: the default EGNN (configs/demo.yaml's model), conservative forces;
- ``matscale-direct``: the same with its direct equivariant force head;
- ``paper-egnn``: the paper's layer as HydraGNN lays it out, direct per-atom force MLP
  (``paper_egnn.py``, written from the paper's description);
- ``paper-egnn-conservative``: the same layers, forces as −∂E/∂x;
- ``mace``: mace-torch in its own virtual environment (``setup_mace``, same torch pin), a
  small model of about matscale's parameter count (``mace_model.MaceSettings``).

A run whose result file exists is skipped (delete it to redo), so the grid resumes. Writes
``benchmarks/results/peers.json``, ``benchmarks/results/peers_<source>.png`` (validation force
error against training seconds) and prints the README's table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

MODELS = ["matscale", "matscale-direct", "paper-egnn", "paper-egnn-conservative", "mace"]
#: The family held out of training per source: EMT surfaces (slabs never seen in training),
#: molecular dimers (two molecules at short range).
HOLDOUT = {"emt-metals": ["surface"], "xtb-molecules": ["dimer"]}


def python_for(model: str) -> str:
    """MACE runs in its own environment (benchmarks/peers/setup_mace makes it)."""
    if model == "mace":
        py = ROOT / ".venv-mace" / "bin" / "python"
        if not py.exists():
            subprocess.run([str(HERE / "setup_mace")], check=True, cwd=ROOT)
        return str(py)
    return sys.executable


def plot(results: list[dict[str, Any]], source: str, path: Path) -> None:
    """Validation force and energy MAE against training seconds, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        if r["source"] != source:
            continue
        s = [p["seconds"] for p in r["curve"]]
        axes[0].plot(s, [p["forces_mae_meV_per_A"] for p in r["curve"]], "o-", label=r["model"])
        axes[1].plot(s, [p["energy_mae_meV_per_atom"] for p in r["curve"]], "o-")
    for ax, what in zip(axes, ("force MAE (meV/Å)", "energy MAE (meV/atom)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training seconds (2 CPU threads)")
        ax.set_ylabel(f"validation {what}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{source}: error against wall-clock budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def at_seconds(r: dict[str, Any], fraction: float, key: str) -> float:
    """The curve's value at ``fraction`` of the budget."""
    target = fraction * r["budget_seconds"]
    point = min(r["curve"], key=lambda p: abs(p["seconds"] - target))
    return float(point.get(key, float("nan")))


def table(results: list[dict[str, Any]]) -> str:
    """The README's Markdown table."""
    lines = [
        "| source | model | parameters | epochs | val E (meV/atom) | val F (meV/Å) "
        "| F at ½ budget | held-out F (meV/Å) | atoms/s, 1 structure | atoms/s, batched "
        "| peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        v, h = r["val"], r.get("holdout", {})
        lines.append(
            f"| {r['source']} | {r['model']} | {r['parameters']:,} | {r['epochs']:.1f} "
            f"| {v.get('energy_mae_meV_per_atom', float('nan')):.2f} "
            f"| {v.get('forces_mae_meV_per_A', float('nan')):.1f} "
            f"| {at_seconds(r, 0.5, 'forces_mae_meV_per_A'):.1f} "
            f"| {h.get('forces_mae_meV_per_A', float('nan')):.1f} "
            f"| {r['inference_atoms_per_s_single']:,.0f} "
            f"| {r['inference_atoms_per_s_batched']:,.0f} "
            f"| {r['peak_rss_mib']:,.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    ap.add_argument("--sources", nargs="*", default=sorted(HOLDOUT))
    ap.add_argument("--work", type=Path, default=Path("data/peers"), help="per-run results")
    args = ap.parse_args()
    results = []
    for source in args.sources:
        for model in args.models:
            out = args.work / f"{args.minutes:g}min" / f"{source}-{model}.json"
            if not out.exists():
                cmd = [
                    python_for(model), str(HERE / "train_peer.py"), "--model", model,
                    "--source", source, "--store", str(args.store),
                    "--minutes", str(args.minutes), "--out", str(out),
                    "--holdout", *HOLDOUT.get(source, []),
                ]  # fmt: skip
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            results.append(json.loads(out.read_text()))
    for source in args.sources:
        plot(results, source, RESULTS / f"peers_{source}.png")
    text = table(results)
    print(text)
    write_json(
        "peers",
        {
            "command": " ".join(["benchmarks/peers/run.py", *sys.argv[1:]]),
            "minutes_per_model_and_source": args.minutes,
            "holdout": HOLDOUT,
            "runs": results,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
