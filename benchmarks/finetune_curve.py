"""What pretraining buys: fine-tuning against training from scratch on a system the pretrained
model never saw, at 50, 200 and 1,000 structures, beside a teacher used as it is.

The system: binary crystals absent from every generator's prototypes (ZnS, LiCl, BP, AlN, NaF,
MgS, GaN, KF in rocksalt or zincblende), strained ±4 % and rattled, labelled by GFN1-xTB
(tblite), a level of theory the pretrained model has a head for only on other crystals. Every
arm trains the same steps on the same training structures and is scored on the same 200 test
structures:

- ``finetune``: the pretrained model, a new head for the new source (``matscale finetune``);
- ``finetune-frozen``: the same with the backbone frozen (heads only);
- ``scratch``: the pretrained model's architecture from random weights;
- ``teacher``: the teacher as it is (``--teacher``), no training: force MAE against the
  GFN1-xTB forces (energies are another level of theory: not compared).

    .venv/bin/python benchmarks/finetune_curve.py --model data/runs/demo/model.pt \\
        --sizes 50 200 1000 --steps 600

Writes ``benchmarks/results/finetune_curve.json`` and ``finetune_curve.png`` (``--name``
another name).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_json

#: (formula, structure, lattice constant Å): none of them in xtb-solids or the demo data.
PROTOTYPES = (
    ("ZnS", "zincblende", 5.41), ("LiCl", "rocksalt", 5.13), ("BP", "zincblende", 4.54),
    ("AlN", "zincblende", 4.38), ("NaF", "rocksalt", 4.63), ("MgS", "rocksalt", 5.20),
    ("GaN", "zincblende", 4.50), ("KF", "rocksalt", 5.35),
)  # fmt: skip
SOURCE = "xtb-new-binaries"
TEST_SIZE = 200


def make_data(n: int, seed: int) -> list[Any]:
    """``n`` labelled structures of :data:`PROTOTYPES` (GFN1-xTB; failed SCFs skipped)."""
    from ase.build import bulk
    from tblite.ase import TBLite

    from matscale.data.generate.geometry import strain_cell
    from matscale.data.readers import atoms_to_structure

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        formula, kind, a = PROTOTYPES[int(rng.integers(len(PROTOTYPES)))]
        atoms = bulk(formula, kind, a=a, cubic=True)
        strain_cell(atoms, rng, normal=0.04, shear=0.02)
        atoms.rattle(stdev=float(rng.uniform(0.02, 0.10)), rng=rng)
        atoms.calc = TBLite(method="GFN1-xTB", verbosity=0, max_iterations=250)
        try:
            atoms.calc.calculate(atoms, ["energy", "forces", "stress"])
        except Exception:  # a failed SCF: not a structure of the set
            continue
        atoms.info["family"] = formula
        out.append(atoms_to_structure(atoms, source=SOURCE))
    return out


def pack_store(structures: list[Any], folder: Path, cutoff: float) -> Path:
    import ase.io

    from matscale.data.pack import PackConfig, pack

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{SOURCE}.extxyz"
    ase.io.write(path, [s.to_atoms() for s in structures])
    pack([path], folder / "store", PackConfig(workers=1, cutoff=cutoff), progress=False,
         overwrite=True)  # fmt: skip
    return folder / "store"


def arm_row(
    arm: str, model: str, store: Path, out: Path, steps: int, test: list[Any]
) -> dict[str, Any]:
    """One arm trained and scored on ``test``: its errors, or, where fine-tuning refuses it
    (a frozen backbone on elements the model never saw: their embeddings would stay random),
    the refusal: a result, not a crash."""
    from matscale.errors import ConfigError

    try:
        return {"arm": arm, **test_errors(run_arm(arm, model, store, out, steps), test)}
    except ConfigError as exc:
        return {"arm": arm, "refused": str(exc)}


def run_arm(arm: str, model: str, store: Path, out: Path, steps: int) -> Path:
    """Train one arm on ``store`` (90 % training, 10 % validation) for ``steps``; returns its
    model file."""
    from matscale.calc.model_file import load_potential
    from matscale.config import load
    from matscale.train.loop import train

    pre = load_potential(model).model.config
    common = [
        f"data.store={store}", f"out_dir={out}", f"name={arm}", f"train.steps={steps}",
        f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.warmup_steps=20",
        "data.split=[0.9,0.1,0.0]", "data.max_atoms=256",
    ]  # fmt: skip
    if arm == "scratch":
        extra = [f"model.width={pre.width}", f"model.depth={pre.depth}",
                 f"model.n_radial={pre.n_radial}", f"model.cutoff={pre.cutoff}",
                 "train.lr=5e-3"]  # fmt: skip
    else:
        extra = [f"train.init_from={model}", "train.lr=1e-3"]
        if arm == "finetune-frozen":
            extra.append("train.freeze=backbone")
    cfg = load(None, [*common, *extra])
    train(cfg, progress=False)
    return cfg.run_dir / "model.pt"


def test_errors(model_file: Path, test: list[Any]) -> dict[str, float]:
    """Energy (meV/atom) and force (meV/Å) MAE of ``model_file``'s new head on ``test``."""
    from matscale.calc.evaluation import evaluate_structures, summarise
    from matscale.calc.model_file import load_potential

    m = summarise(evaluate_structures(load_potential(model_file), test, head=SOURCE,
                                      progress=False))  # fmt: skip
    return {k: v for k, v in m.items() if "/" not in k and "_mae_" in k}  # over every structure


def teacher_force_mae(name: str, structures: list[Any]) -> float:
    """The teacher's force MAE (meV/Å) against the structures' labels, used as it is."""
    from matscale.bench.subjects import subject

    calc = subject(name).calc
    errors = []
    for s in structures:
        atoms = s.to_atoms()
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - s.forces).ravel())
    return float(1000 * np.concatenate(errors).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="pretrained model file or shipped name")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--teacher", default="sevennet")
    p.add_argument(
        "--work", type=Path, default=None, help="run folders (default data/finetune-curve/NAME)"
    )
    p.add_argument("--name", default="finetune_curve", help="results file (.json, .png)")
    args = p.parse_args()
    # one folder per results name: the arms' runs resume, so another model's runs must not be
    # found there (they are refused)
    args.work = args.work or Path("data/finetune-curve") / args.name
    from matscale import pretrained

    model = str(pretrained.model_file(args.model))
    data = make_data(max(args.sizes) + TEST_SIZE, seed=0)
    test = data[-TEST_SIZE:]
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        store = pack_store(data[:n], args.work / f"n{n}", cutoff=5.0)
        for arm in ("finetune", "finetune-frozen", "scratch"):
            row = arm_row(arm, model, store, args.work / f"n{n}", args.steps, test)
            rows.append({"train_structures": n, **row})
            print(n, arm, {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
    teacher = {
        "teacher": args.teacher,
        "forces_mae_meV_per_A": teacher_force_mae(args.teacher, test),
    }
    print("teacher", teacher)
    payload = {
        "model": model,
        "steps": args.steps,
        "source": SOURCE,
        "test_structures": TEST_SIZE,
        "families": dict(Counter(s.family for s in test)),
        "rows": rows,
        "teacher": teacher,
    }
    write_json(args.name, payload)
    plot(payload, RESULTS / f"{args.name}.png")


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for k, arm in enumerate(("finetune", "finetune-frozen", "scratch")):
        rows = [r for r in payload["rows"] if r["arm"] == arm]
        key = "forces_mae_meV_per_A"
        ax.plot([r["train_structures"] for r in rows], [r.get(key, np.nan) for r in rows],
                "o-", color=f"C{k}", label=arm)  # fmt: skip
    ax.axhline(payload["teacher"]["forces_mae_meV_per_A"], color="k", ls="--",
               label=f"{payload['teacher']['teacher']} as it is")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training structures")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
