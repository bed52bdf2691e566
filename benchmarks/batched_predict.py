"""Batched prediction against one structure per call, on structures of the default data.

    .venv/bin/python benchmarks/batched_predict.py --model data/runs/demo/model.pt

Takes ``--structures`` structures of mixed sizes and sources from the store (a fixed random
draw), predicts energy, forces and stress (a) one structure per call through the ASE calculator
and (b) with :func:`matscale.calc.predict` under several atom budgets, checks that both give
the same numbers, and prints structures/s and atoms/s with the ratio to (a), measured in the
same run. Writes ``benchmarks/results/batched_predict.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json

from matscale.calc import MatscaleCalculator, load_potential, predict
from matscale.data.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--structures", type=int, default=400)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="batched_predict")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    potential = load_potential(args.model)
    pick = np.sort(np.random.default_rng(0).choice(len(store), args.structures, replace=False))
    structures = [store[int(i)] for i in pick]
    atoms_total = sum(s.n_atoms for s in structures)
    calcs = {h: MatscaleCalculator(potential, head=h) for h in potential.heads}

    predict(potential, structures[:20])  # warm-up
    start = time.perf_counter()
    single = []
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc = calcs[s.source]
        single.append(atoms.get_potential_energy())
    t_single = time.perf_counter() - start
    rows = [_row("one structure per call (ASE calculator)", t_single, len(structures), atoms_total)]
    for budget in args.budgets:
        start = time.perf_counter()
        batched = predict(potential, structures, max_atoms=budget)
        seconds = time.perf_counter() - start
        worst = max(abs(r["energy"] - e) for r, e in zip(batched, single, strict=True))
        row = _row(f"predict, max_atoms={budget}", seconds, len(structures), atoms_total)
        row |= {"speedup": t_single / seconds, "max_energy_difference_eV": worst}
        rows.append(row)
    mean = atoms_total / len(structures)
    print(f"{len(structures)} structures, {atoms_total} atoms, {mean:.1f} per structure")
    print(f"{'mode':<42} {'structures/s':>12} {'atoms/s':>10} {'speed-up':>9}")
    for r in rows:
        print(
            f"{r['mode']:<42} {r['structures_per_s']:>12.1f} {r['atoms_per_s']:>10.0f} "
            f"{r.get('speedup', 1.0):>8.1f}x"
        )
    write_json(
        args.name,
        {"args": {**vars(args), "model": str(args.model), "store": str(args.store)}, "rows": rows},
    )


def _row(mode: str, seconds: float, n: int, atoms: int) -> dict:
    return {
        "mode": mode,
        "seconds": seconds,
        "structures_per_s": n / seconds,
        "atoms_per_s": atoms / seconds,
    }


if __name__ == "__main__":
    main()
