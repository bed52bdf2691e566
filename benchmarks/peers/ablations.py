"""What each choice of matscale's EGNN buys, in error and in time, at a fixed wall-clock budget.

    .venv/bin/python benchmarks/peers/ablations.py --minutes 3 --sources emt-metals xtb-molecules

Each variant changes one thing of the default (``train_peer.py``'s ``matscale`` model and
recipe) and trains through the same loop, split and budget as ``run.py``'s peers. A result file
that exists is reused (delete it to redo). Writes ``benchmarks/results/peers_ablations_<M>min.json``
and prints a table of validation errors and steps done, with ratios to the default.
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
    "16 vector channels": ("matscale", ["vector_channels=16"], [], []),
    "ReLU (the paper's)": ("matscale", ["activation=relu"], [], []),
    "layer norm": ("matscale", ["norm=layer"], [], []),
    "plain first edge linear": ("matscale", ["factored=false"], [], []),
    "16 radial functions": ("matscale", ["n_radial=16"], [], []),
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
    "no EMA": ("matscale", [], ["ema_decay=null"], []),
    "batches of 512 atoms": ("matscale", [], [], ["--max-atoms", "512"]),
    "batches of 128 atoms": ("matscale", [], [], ["--max-atoms", "128"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--sources", nargs="*", default=["emt-metals", "xtb-molecules"])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--val-structures", type=int, default=300)
    ap.add_argument("--work", type=Path, default=Path("data/peers/ablations"))
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
                ]  # fmt: skip
                if model_set:
                    cmd += ["--model-set", *model_set]
                if recipe_set:
                    cmd += ["--recipe-set", *recipe_set]
                print("$", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True)
            rows.append({"variant": name, **json.loads(out.read_text())})
    lines = [
        "| source | variant | parameters | steps | val E (meV/atom) | val F (meV/Å) "
        "| F vs default |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for source in args.sources:
        base = next((r for r in rows if r["source"] == source and r["variant"] == "default"), None)
        for r in (r for r in rows if r["source"] == source):
            f = r["val"]["forces_mae_meV_per_A"]
            ratio = f / base["val"]["forces_mae_meV_per_A"] if base else float("nan")
            lines.append(
                f"| {source} | {r['variant']} | {r['parameters']:,} | {r['steps']:,} "
                f"| {r['val']['energy_mae_meV_per_atom']:.2f} | {f:.1f} | {ratio:.2f} |"
            )
    text = "\n".join(lines)
    print(text)
    write_json(
        f"peers_ablations_{args.minutes:g}min",
        {
            "command": " ".join(["benchmarks/peers/ablations.py", *sys.argv[1:]]),
            "minutes": args.minutes,
            "runs": rows,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
