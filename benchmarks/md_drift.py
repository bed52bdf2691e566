"""NVE energy drift of trained models through the ASE calculator: a default-data alloy and a
molecule, conservative and direct forces.

    .venv/bin/python benchmarks/md_drift.py --model data/runs/demo/model.pt \
        --direct-model data/runs/demo-direct/model.pt

Each system starts from a structure of the default data (``--store``), relaxed by the model
(FIRE, 0.05 eV/Å), with Maxwell–Boltzmann velocities at twice ``--temperature`` (the alloy;
300 K for the molecule), so that equipartition leaves it near that temperature (the table
gives the mean), no centre-of-mass motion, and runs ``--steps`` velocity-Verlet
steps of ``--timestep`` fs. The drift is the least-squares slope of the total energy
(meV/atom/ps); the spread is the largest excursion of the total energy from its start
(meV/atom); a conservative model should show a small spread and no trend. Writes
``benchmarks/results/md_drift.json`` and, with matplotlib, ``md_drift.png``.
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

from matscale.calc import MatscaleCalculator, load_potential
from matscale.calc.dynamics import MDConfig, RelaxConfig, energy_drift, relax, run_md
from matscale.data.store import Store

#: The systems: (label, source, family prefix, fewest atoms, temperature K).
SYSTEMS = (
    ("alloy", "emt-metals", "md-", 16, None),
    ("molecule", "xtb-molecules", "", 6, 300.0),
)


def pick(store: Store, source: str, family: str, min_atoms: int) -> Any:
    """The first structure of ``source`` whose family starts with ``family`` and that has at
    least ``min_atoms`` atoms, as ASE Atoms (labels dropped)."""
    sid = store.sources.index(source)
    for i in np.flatnonzero(store.source_ids == sid):
        s = store[int(i)]
        if s.family.startswith(family) and s.n_atoms >= min_atoms:
            atoms = s.to_atoms()
            atoms.calc = None
            return atoms, s.family
    raise SystemExit(f"no {source} structure of family {family}* with >= {min_atoms} atoms")


def run(model: Path, atoms: Any, head: str, args: argparse.Namespace, temp: float) -> dict:
    atoms = atoms.copy()
    atoms.calc = MatscaleCalculator(load_potential(model), head=head)
    # start from the model's own minimum: a snapshot far from it would turn its potential
    # energy into heat, and the run would measure a hotter system than asked
    relaxed = relax(atoms, RelaxConfig(optimizer="fire", fmax=0.05, steps=500), progress=False)
    cfg = MDConfig(
        ensemble="nve",
        timestep_fs=args.timestep,
        steps=args.steps,
        # from a minimum, half the kinetic energy flows into the potential (equipartition):
        # velocities at 2T leave the system near T
        temperature_K=2 * temp,
        log_every=args.log_every,
        seed=0,
    )
    start = time.perf_counter()
    rows = run_md(atoms, cfg, progress=False)
    seconds = time.perf_counter() - start
    n = len(atoms)
    etot = np.array([r["etot_eV"] for r in rows])
    return {
        "atoms": n,
        "relaxed_first": {"steps": relaxed.steps, "converged": relaxed.converged},
        "steps": args.steps,
        "timestep_fs": args.timestep,
        "picoseconds": rows[-1]["time_ps"],
        "mean_temperature_K": float(np.mean([r["temperature_K"] for r in rows[len(rows) // 10 :]])),
        "drift_meV_per_atom_per_ps": energy_drift(rows, n),
        "spread_meV_per_atom": float(1000 * np.max(np.abs(etot - etot[0])) / n),
        "ms_per_step": 1000 * seconds / max(args.steps, 1),
        "time_ps": [r["time_ps"] for r in rows],
        "etot_meV_per_atom": list(1000 * (etot - etot[0]) / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="conservative model.pt")
    ap.add_argument("--direct-model", type=Path, default=None, help="direct-force model.pt")
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--timestep", type=float, default=1.0, help="fs")
    ap.add_argument("--temperature", type=float, default=600.0, help="K (the alloy)")
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="md_drift", help="results file benchmarks/results/NAME")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store = Store(args.store)
    models = {"conservative": args.model}
    if args.direct_model is not None:
        models["direct"] = args.direct_model
    results = []
    print(
        f"{'model':<13} {'system':<24} {'atoms':>5} {'ps':>6} {'T (K)':>7} "
        f"{'drift meV/atom/ps':>18} {'spread meV/atom':>16} {'ms/step':>8}"
    )
    for label, source, family, min_atoms, temp in SYSTEMS:
        atoms, fam = pick(store, source, family, min_atoms)
        for kind, path in models.items():
            r = run(path, atoms, source, args, temp or args.temperature)
            r |= {"model": kind, "model_file": str(path), "system": f"{label} ({source}/{fam})"}
            r["initial_temperature_K"] = 2 * (temp or args.temperature)
            results.append(r)
            print(
                f"{kind:<13} {r['system'][:24]:<24} {r['atoms']:>5} {r['picoseconds']:>6.1f} "
                f"{r['mean_temperature_K']:>7.0f} {r['drift_meV_per_atom_per_ps']:>18.3f} "
                f"{r['spread_meV_per_atom']:>16.2f} {r['ms_per_step']:>8.2f}",
                flush=True,
            )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_json(args.name, {"args": settings, "runs": results})
    _plot(results, path.with_suffix(".png"))


def _plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(r["time_ps"], r["etot_meV_per_atom"], label=f"{r['model']}, {r['system']}")
    title = f"NVE, {results[0]['timestep_fs']:g} fs steps"
    ax.set(xlabel="time (ps)", ylabel="E_total − E_total(0) (meV/atom)", title=title)
    ax.set_yscale("symlog", linthresh=0.1)  # direct forces wander by eV, conservative by µeV
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
