"""What each choice of matscale's EGNN buys, in error and in time, at a fixed wall-clock budget.

    .venv/bin/python benchmarks/peers/ablations.py --minutes 3 --sources emt-metals xtb-molecules

Each variant changes one thing of the default (``train_peer.py``'s ``matscale`` model and
recipe) and trains through the same loop, split, budget and held-out families
(``matscale.data.heldout``) as ``run.py``'s peers. A result file that exists is reused (delete
it to redo). Writes ``benchmarks/results/<name>_<M>min.json`` and prints a table of each
held-out family's force error first, then validation errors and steps, with ratios to the
default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import write_json

from matscale.data.heldout import HELDOUT_FAMILIES

HERE = Path(__file__).resolve().parent

#: name → (model, EGNNConfig changes, Recipe changes, extra arguments). One change each from
#: the default (no residual, no coordinate channel, batches of 256 atoms); the earlier default
#: (residual updates, coordinate channel, 512 atoms) is a variant too.
VARIANTS: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "default": ("matscale", [], [], []),
    "default, seed 1 (noise)": ("matscale", [], [], ["--seed", "1"]),
    "direct forces": ("matscale-direct", [], [], []),
    "residual updates": ("matscale", ["residual=true"], [], []),
    "coordinate channel": ("matscale", ["coord_update=true"], [], []),
    "earlier default (residual, coordinates, 512 atoms)": (
        "matscale",
        ["residual=true", "coord_update=true"],
        [],
        ["--max-atoms", "512"],
    ),
    "no pair prior": ("matscale", ["pair_repulsion=false"], [], []),
    "16 vector channels": ("matscale", ["vector_channels=16"], [], []),
    "ReLU (the paper's)": ("matscale", ["activation=relu"], [], []),
    "layer norm": ("matscale", ["norm=layer"], [], []),
    "plain first edge linear": ("matscale", ["factored=false"], [], []),
    "16 radial functions": ("matscale", ["n_radial=16"], [], []),
    "16 radial functions, seed 1 (noise)": ("matscale", ["n_radial=16"], [], ["--seed", "1"]),
    "24 radial functions": ("matscale", ["n_radial=24"], [], []),
    "16 radial functions, 16 vector channels": (
        "matscale",
        ["n_radial=16", "vector_channels=16"],
        [],
        [],
    ),
    "envelope p = 3": ("matscale", ["envelope_p=3"], [], []),
    "width 128": ("matscale", ["width=128"], [], []),
    "depth 3, width 64 (earlier default)": ("matscale", ["depth=3", "width=64"], [], []),
    "depth 4, width 56": ("matscale", ["depth=4", "width=56"], [], []),
    "lr 2e-3 (earlier default)": ("matscale", [], ["lr=2e-3"], []),
    "lr 1e-3": ("matscale", [], ["lr=1e-3"], []),
    "constant lr after warm-up": ("matscale", [], ["min_lr_ratio=1.0"], []),
    "forces weighted 4:1": ("matscale", [], ["force_weight=4"], []),
    "MSE loss, forces x10": ("matscale", [], ["loss=mse", "force_weight=10"], []),
    "Huber loss": ("matscale", [], ["loss=huber"], []),
    "16 radial functions, MSE on forces only, forces x10": (
        "matscale",
        ["n_radial=16"],
        ["force_loss=mse", "force_weight=10"],
        [],
    ),
    "16 radial functions, MSE on forces only, forces x3": (
        "matscale",
        ["n_radial=16"],
        ["force_loss=mse", "force_weight=3"],
        [],
    ),
    "16 radial functions, MSE loss, forces x10": (
        "matscale",
        ["n_radial=16"],
        ["loss=mse", "force_weight=10"],
        [],
    ),
    "forces weighted by magnitude": ("matscale", [], ["force_weighting=magnitude"], []),
    "no EMA": ("matscale", [], ["ema_decay=null"], []),
    "batches of 512 atoms": ("matscale", [], [], ["--max-atoms", "512"]),
    "batches of 128 atoms": ("matscale", [], [], ["--max-atoms", "128"]),
}


def table(rows: list[dict[str, Any]], source: str) -> str:
    """One source's Markdown table: steps and epochs seen, held-out force errors per family
    first, then validation, with the ratio of each to the default's."""
    families = HELDOUT_FAMILIES.get(source, ())
    mine = [r for r in rows if r["source"] == source]
    base = next((r for r in mine if r["variant"] == "default"), None)

    def cell(r: dict[str, Any], family: str | None) -> str:
        m = r["val"] if family is None else r.get("holdout_by_family", {}).get(family, {})
        b = (
            None
            if base is None
            else (
                base["val"] if family is None else base.get("holdout_by_family", {}).get(family, {})
            )
        )
        f = m.get("forces_mae_meV_per_A")
        if f is None:
            return "–"
        ratio = f" ({f / b['forces_mae_meV_per_A']:.2f})" if b and b is not m else ""
        return f"{f:.1f}{ratio}"  # fmt: skip

    lines = [
        "| variant | parameters | steps | epochs | "
        + " | ".join(f"{f} F" for f in families)
        + " | val E (meV/atom) | val F (meV/Å) |",
        "|---|---:|---:|---:|" + "---:|" * (len(families) + 2),
    ]
    for r in mine:
        lines.append(
            f"| {r['variant']} | {r['parameters']:,} | {r['steps']:,} | {r['epochs']:.1f} | "
            + " | ".join(cell(r, f) for f in families)
            + f" | {r['val']['energy_mae_meV_per_atom']:.2f} | {cell(r, None)} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--sources", nargs="*", default=["emt-metals", "xtb-molecules"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--val-structures", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path("data/peers/ablations"))
    ap.add_argument("--name", default="peers_ablations", help="results file name")
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for source in args.sources:
        for name in args.variants:
            model, model_set, recipe_set, extra = VARIANTS[name]
            slug = "".join(c if c.isalnum() else "-" for c in name.lower())
            out = args.work / f"{args.minutes:g}min" / f"{source}-{slug}.json"
            if not out.exists():
                cmd = [
                    sys.executable, str(HERE / "train_peer.py"), "--model", model,
                    "--source", source, "--store", str(args.store),
                    "--minutes", str(args.minutes), "--out", str(out),
                    "--val-structures", str(args.val_structures), *extra,
                    "--holdout", *HELDOUT_FAMILIES.get(source, ()),
                ]  # fmt: skip
                if model_set:
                    cmd += ["--model-set", *model_set]
                if recipe_set:
                    cmd += ["--recipe-set", *recipe_set]
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            rows.append({"variant": name, **json.loads(out.read_text())})
    tables = {source: table(rows, source) for source in args.sources}
    for source, text in tables.items():
        print(f"\n{source}\n{text}")
    write_json(
        f"{args.name}_{args.minutes:g}min",
        {
            "command": " ".join(["benchmarks/peers/ablations.py", *sys.argv[1:]]),
            "minutes": args.minutes,
            "runs": rows,
            "tables": tables,
        },
    )


if __name__ == "__main__":
    main()
