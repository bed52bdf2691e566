"""matscale against its peers: accuracy per CPU-minute, held-out families and inference speed.

    .venv/bin/python benchmarks/peers/run.py                           # the grid, 10 min each
    .venv/bin/python benchmarks/peers/run.py --minutes 5 10 --models matscale mace-L0-32

For each source of the default data (EMT metals, xTB molecules), each budget and each model,
one ``train_peer.py`` process trains for the same budget of training seconds on the same split
with the same batches (float32, 2 threads) and reports validation errors over time, the error
on each held-out family of the protocol (``matscale.data.heldout``: families that differ from
training in kind, kept out of it), inference atoms/s and peak memory. Models:

- ``matscale``: the default EGNN (configs/demo.yaml's model), conservative forces;
- ``matscale-direct``: the same with its direct equivariant force head;
- ``paper-egnn``: the paper's layer as HydraGNN lays it out, direct per-atom force MLP
  (``paper_egnn.py``, written from the paper's description);
- ``paper-egnn-conservative``: the same layers, forces as −∂E/∂x;
- ``mace-L<max_L>-<channels>``: mace-torch in its own virtual environment (``setup_mace``,
  same torch pin) at max_L 0 and 1, 32 and 64 channels; the tables name the best per budget
  (lowest validation force error, what a user would pick) and the JSON keeps all.

A run whose result file exists is skipped (delete it to redo), so the grid resumes. Writes
``benchmarks/results/<name>.json`` and ``<name>_<source>.png`` (``--name``, default ``peers``;
validation force error against training seconds) and prints the tables of docs/peers.md.
``--sources`` defaults to the store's sources that have held-out families.
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
from train_peer import MACE_SIZES, MODELS

from matscale.data.heldout import HELDOUT_FAMILIES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
#: What the grid runs unless told otherwise: the default, and MACE at its four sizes.
GRID_MODELS = ["matscale", *MACE_SIZES]


def python_for(model: str) -> str:
    """MACE runs in its own environment (benchmarks/peers/setup_mace makes it)."""
    if model in MACE_SIZES:
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
        label = f"{r['model']}, {r['budget_seconds'] / 60:g} min"
        axes[0].plot(s, [p["forces_mae_meV_per_A"] for p in r["curve"]], "o-", label=label)
        axes[1].plot(s, [p["energy_mae_meV_per_atom"] for p in r["curve"]], "o-")
    for ax, what in zip(axes, ("force MAE (meV/Å)", "energy MAE (meV/atom)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training seconds (2 CPU threads)")
        ax.set_ylabel(f"validation {what}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{source}: error against wall-clock budget")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def at_seconds(r: dict[str, Any], fraction: float, key: str) -> float:
    """The curve's value at ``fraction`` of the budget."""
    target = fraction * r["budget_seconds"]
    point = min(r["curve"], key=lambda p: abs(p["seconds"] - target))
    return float(point.get(key, float("nan")))


def best_mace(results: list[dict[str, Any]], source: str, budget: float) -> dict[str, Any] | None:
    """The MACE size with the lowest validation force error for ``source`` at ``budget`` s."""
    maces = [
        r for r in results
        if r["model"] in MACE_SIZES and r["source"] == source and r["budget_seconds"] == budget
    ]  # fmt: skip
    return min(maces, key=lambda r: r["val"]["forces_mae_meV_per_A"], default=None)


def _f(metrics: dict[str, float], key: str = "forces_mae_meV_per_A", digits: int = 1) -> str:
    value = metrics.get(key)
    return "–" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]], source: str) -> str:
    """One source's Markdown table: every run, validation and each held-out family's force
    error, speed; the best MACE of each budget is marked."""
    families = HELDOUT_FAMILIES.get(source, ())
    head = " | ".join(f"{f} F" for f in families)
    lines = [
        f"| minutes | model | parameters | epochs | val E (meV/atom) | val F (meV/Å) | {head} "
        "| atoms/s, 1 structure | atoms/s, batched |",
        "|---:|---|---:|---:|---:|---:|" + "---:|" * len(families) + "---:|---:|",
    ]
    mine = sorted(
        (r for r in results if r["source"] == source),
        key=lambda r: (r["budget_seconds"], GRID_MODELS.index(r["model"])
                       if r["model"] in GRID_MODELS else 99),
    )  # fmt: skip
    for r in mine:
        best = best_mace(results, source, r["budget_seconds"])
        name = r["model"] + (" (best MACE)" if best is r else "")
        held = r.get("holdout_by_family", {})
        cells = " | ".join(_f(held.get(f, {})) for f in families)
        lines.append(
            f"| {r['budget_seconds'] / 60:g} | {name} | {r['parameters']:,} | {r['epochs']:.1f} "
            f"| {_f(r['val'], 'energy_mae_meV_per_atom', 2)} | {_f(r['val'])} | {cells} "
            f"| {r['inference_atoms_per_s_single']:,.0f} "
            f"| {r['inference_atoms_per_s_batched']:,.0f} |"
        )
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """Per budget: matscale's errors over the best MACE's (validation energy and forces, each
    held-out family's forces, batched inference speed); < 1 is better for errors."""
    out = []
    for r in results:
        if r["model"] != "matscale" or r["source"] != source:
            continue
        best = best_mace(results, source, r["budget_seconds"])
        if best is None:
            continue
        ratios = {
            "val_energy": r["val"]["energy_mae_meV_per_atom"]
            / best["val"]["energy_mae_meV_per_atom"],
            "val_forces": r["val"]["forces_mae_meV_per_A"] / best["val"]["forces_mae_meV_per_A"],
        }
        for f, m in r.get("holdout_by_family", {}).items():
            other = best.get("holdout_by_family", {}).get(f)
            if other:
                ratios[f"{f}_forces"] = m["forces_mae_meV_per_A"] / other["forces_mae_meV_per_A"]
        speed = r["inference_atoms_per_s_batched"] / best["inference_atoms_per_s_batched"]
        out.append({
            "source": source, "minutes": r["budget_seconds"] / 60, "best_mace": best["model"],
            "error_ratios": ratios, "inference_speed_ratio": speed,
            "met": all(v <= 1.0 for v in ratios.values()) and speed >= 5.0,
        })  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--minutes", type=float, nargs="*", default=[10.0], help="budgets")
    ap.add_argument("--models", nargs="*", default=GRID_MODELS, choices=MODELS)
    ap.add_argument(
        "--sources", nargs="*", default=None, help="default: the store's with held-out families"
    )
    ap.add_argument("--work", type=Path, default=Path("data/peers"), help="per-run results")
    ap.add_argument("--name", default="peers", help="benchmarks/results/<name>.json")
    args = ap.parse_args()
    if args.sources is None:  # a source the store lacks (xtb-main-group) stopped the grid
        from matscale.data.store import Store

        have = Store(args.store).sources
        args.sources = [s for s in sorted(HELDOUT_FAMILIES) if s in have]
    for minutes in args.minutes:
        for source in args.sources:
            for model in args.models:
                out = args.work / f"{minutes:g}min" / f"{source}-{model}.json"
                if out.exists():
                    continue
                cmd = [
                    python_for(model), str(HERE / "train_peer.py"), "--model", model,
                    "--source", source, "--store", str(args.store),
                    "--minutes", str(minutes), "--out", str(out),
                    "--holdout", *HELDOUT_FAMILIES.get(source, ()),
                ]  # fmt: skip
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
    # every finished run of these sources, whatever the budget (earlier calls' too)
    results = [json.loads(p.read_text()) for p in sorted(args.work.glob("*min/*.json"))]
    results = [r for r in results if r["source"] in args.sources and r["model"] in args.models]
    tables, verdicts = {}, []
    for source in args.sources:
        plot(results, source, RESULTS / f"{args.name}_{source}.png")
        tables[source] = table(results, source)
        verdicts += verdict(results, source)
        print(f"\n{source}\n{tables[source]}")
    for v in verdicts:
        ratios = ", ".join(f"{k} {x:.2f}" for k, x in v["error_ratios"].items())
        print(
            f"{v['source']} {v['minutes']:g} min vs {v['best_mace']}: {ratios}; "
            f"inference {v['inference_speed_ratio']:.1f}x; {'met' if v['met'] else 'not met'}"
        )
    write_json(
        args.name,
        {
            "command": " ".join(["benchmarks/peers/run.py", *sys.argv[1:]]),
            "heldout_families": HELDOUT_FAMILIES,
            "runs": results,
            "tables": tables,
            "verdicts": verdicts,
        },
    )


if __name__ == "__main__":
    main()
