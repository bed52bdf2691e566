"""Train one peer model on one source of a store for a fixed wall-clock budget, and measure it.

    .venv/bin/python benchmarks/peers/train_peer.py --model matscale --source emt --minutes 10
    .venv-mace/bin/python benchmarks/peers/train_peer.py --model mace --source mol --minutes 10

Every model goes through this one loop: the same structures, the same atom-bounded batches
(shuffled by the same seed), the same budget of training seconds (the clock stops while it
evaluates), the same float32 arithmetic on the same threads, and the same evaluation code
(``matscale.train.evaluate``). What differs is each model's own recipe — its learning rate,
loss and EMA, as its authors train it — stated in ``RECIPES``. The learning rate warms up over
the first steps and then follows a cosine over the *time* budget, so every model anneals
fully whatever its speed.

Writes one JSON: parameters, steps, epochs, the validation error at fractions of the budget
(the curve), final validation and held-out-family errors, inference atoms/s (one structure per
call, and batched) and the peak memory of the process. ``run.py`` runs the grid.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matscale.allocator import keep_freed_memory
from matscale.config import DataConfig, TrainConfig, load
from matscale.data.atomgraph import AtomGraph
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from matscale.models.physics import predict
from matscale.train.data import loader_for, make_splits, sampler_for
from matscale.train.evaluate import evaluate
from matscale.train.log import peak_resident_mib
from matscale.train.step import ema_update, make_optimizer, train_step

#: The points of the budget (fractions) at which the validation error is measured.
CURVE = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
CUTOFF = 5.0  # Å, every model
MAX_ATOMS = 512  # atoms per batch, every model


@dataclass(frozen=True)
class Recipe:
    """How a model is trained: what its authors use (documented per entry)."""

    lr: float
    loss: str
    energy_weight: float
    force_weight: float
    ema_decay: float | None
    force_loss: str | None = None
    """Error function of the forces alone (``TrainConfig.force_loss``; None: ``loss``)."""
    force_weighting: str = "uniform"
    """Per-atom weights of the force error (``TrainConfig.force_weighting``)."""
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    """Final learning rate of the cosine as a share of ``lr`` (1.0: constant after warm-up)."""
    max_atoms: int | None = None
    """Atoms per batch for this model; None: ``batch_structures`` or the shared ``MAX_ATOMS``."""
    batch_structures: int | None = None
    """Batches of about this many structures (as ``max_atoms`` = this x the source's mean
    atoms per structure), for models whose recipe sets batches by structures; None: the
    shared ``MAX_ATOMS``."""


DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_recipe() -> Recipe:
    """matscale's default recipe, read from configs/demo.yaml so the benchmark cannot drift
    from it (lr 5e-3: round 3, 0.67x the force error of 2e-3; batches of 256 atoms: round 2,
    half the force error of 512; an MSE on forces with MAE energies: round 5)."""
    demo = load(DEMO_CONFIG)
    t = demo.train
    return Recipe(
        lr=t.lr,
        loss=t.loss,
        energy_weight=t.energy_weight,
        force_weight=t.force_weight,
        ema_decay=t.ema_decay,
        force_loss=t.force_loss,
        force_weighting=t.force_weighting,
        max_atoms=demo.data.max_atoms,
    )


_DEMO_RECIPE = demo_recipe()  # frozen: the two matscale models share it, read once
RECIPES: dict[str, Recipe] = {
    "matscale": _DEMO_RECIPE,
    "matscale-direct": _DEMO_RECIPE,
    # the paper: AdamW at 1e-3, MAE with weights 1:1, no EMA
    "paper-egnn": Recipe(lr=1e-3, loss="mae", energy_weight=1.0, force_weight=1.0, ema_decay=None),
    "paper-egnn-conservative": Recipe(
        lr=1e-3, loss="mae", energy_weight=1.0, force_weight=1.0, ema_decay=None
    ),
    # mace-torch's defaults (`mace_run_train`): lr 0.01 without warm-up, batches of 10
    # structures, the "weighted" MSE loss with energy per atom weight 1 and forces weight 100,
    # EMA 0.99 (its recommended --ema); every MACE size (MACE_SIZES) trains this way
    "mace": Recipe(
        lr=1e-2,
        loss="mse",
        energy_weight=1.0,
        force_weight=100.0,
        ema_decay=0.99,
        warmup_steps=0,
        batch_structures=10,
    ),
}


#: The MACE sizes of the grid: name → (max_L, channels). max_L 0 is invariant MACE (about
#: 3x cheaper per step here than max_L 1); each gets the same recipe, and the tables report
#: the best per budget.
MACE_SIZES: dict[str, tuple[int, int]] = {
    "mace-L0-32": (0, 32),
    "mace-L0-64": (0, 64),
    "mace-L1-32": (1, 32),
    "mace-L1-64": (1, 64),
}
MODELS = ["matscale", "matscale-direct", "paper-egnn", "paper-egnn-conservative", *MACE_SIZES]


def recipe_for(name: str) -> Recipe:
    """The training recipe of the model ``name`` (every MACE size shares MACE's)."""
    return RECIPES["mace" if name in MACE_SIZES else name]


def build_model(
    name: str, store: Store, source: str, changes: dict[str, Any] | None = None
) -> torch.nn.Module:
    """The peer ``name`` for ``source``, with that source's statistics (reference energies
    per element, energy and force scales from the force RMS, mean neighbour count).
    ``changes``: matscale EGNNConfig fields to change (ablations)."""
    stats = store.stats[source]
    force_rms = float(stats["force_rms_eV_per_A"])
    if name.startswith("matscale"):
        from matscale.models.egnn import EGNN, set_statistics

        # the demo's model, read from its config so the benchmark cannot drift from it
        demo = load(DEMO_CONFIG).model
        cfg = replace(
            demo,
            cutoff=CUTOFF,
            heads=(source,),
            avg_neighbours=float(stats["mean_neighbours"]),
            force_head="direct" if name.endswith("direct") else "conservative",
        )
        cfg = replace(cfg, **(changes or {}))
        model = EGNN(cfg)
        set_statistics(model, {source: stats})
        return model
    if changes:
        raise ValueError(f"--model-set changes matscale's models only, not {name}")
    if name.startswith("paper-egnn"):
        from paper_egnn import PaperEGNNConfig, build_paper_egnn

        force_head = "conservative" if name.endswith("conservative") else "direct"
        return build_paper_egnn(PaperEGNNConfig(width=64, depth=3, force_head=force_head), [stats])
    if name in MACE_SIZES:
        from mace_model import MaceSettings, build_mace

        max_l, channels = MACE_SIZES[name]
        ref = {int(z): float(e) for z, e in stats["reference_energy_eV"].items()}
        return build_mace(
            MaceSettings(max_L=max_l, num_channels=channels),
            atomic_numbers=sorted(ref),
            atomic_energies_eV=ref,
            avg_num_neighbors=float(stats["mean_neighbours"]),
            r_max=CUTOFF,
            scale=force_rms,
        )
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")


class OneHead:
    """Batches of one source, relabelled as head 0: each peer here has one output head."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Any:
        for g in self.loader:
            yield replace(g, source=torch.zeros_like(g.source))


def parse_changes(items: list[str]) -> dict[str, Any]:
    """``["width=96", "activation=silu", "ema_decay=None"]`` → typed values (YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected FIELD=VALUE, got {item!r}")
        parsed = None if value in ("None", "null") else yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 5e-3 (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key] = parsed
    return out


def lr_at(step: int, elapsed: float, budget: float, r: Recipe) -> float:
    """Linear warm-up over ``warmup_steps`` steps, then a cosine over the time budget down to
    ``min_lr_ratio`` of the peak."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = min(1.0, elapsed / budget)
    m = r.min_lr_ratio
    return r.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress)))


def inference_speed(
    model: torch.nn.Module, single: list[AtomGraph], batched: list[AtomGraph]
) -> dict[str, float]:
    """Atoms/s of energy + forces in eval mode: one structure per call, and whole batches
    (graphs built beforehand: the model's time only)."""
    model.eval()
    out = {}
    for key, graphs in (("single", single), ("batched", batched)):
        predict(model, graphs[0], forces=True)  # warm-up
        t0 = time.perf_counter()
        atoms = 0
        for g in graphs:
            p = predict(model, g, forces=True)
            p["forces"].sum().item()
            atoms += len(g.numbers)
        out[f"inference_atoms_per_s_{key}"] = atoms / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, choices=MODELS)
    ap.add_argument("--source", required=True, help="a source of the store (emt, mol, …)")
    ap.add_argument("--store", type=Path, default=Path("data/store-default"))
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget")
    ap.add_argument("--holdout", nargs="*", default=[], help="families kept out of training")
    ap.add_argument("--val-structures", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="JSON written here")
    ap.add_argument("--max-atoms", type=int, default=None, help="atoms per batch")
    ap.add_argument(
        "--model-set", nargs="*", default=[], metavar="FIELD=VALUE", help="EGNNConfig changes"
    )
    ap.add_argument(
        "--recipe-set", nargs="*", default=[], metavar="FIELD=VALUE", help="Recipe changes"
    )
    args = ap.parse_args()
    keep_freed_memory()  # every model here allocates as `matscale train` does
    model_changes = parse_changes(args.model_set)
    recipe = replace(recipe_for(args.model), **parse_changes(args.recipe_set))

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    store = Store(args.store)
    if args.source not in store.sources:
        raise SystemExit(f"{args.store}: no source {args.source!r}; it has {store.sources}")
    unknown = set(args.holdout) - set(store.families)
    if unknown:
        raise SystemExit(f"{args.store}: no families {sorted(unknown)}; it has {store.families}")
    max_atoms = args.max_atoms or recipe.max_atoms or MAX_ATOMS
    if args.max_atoms is None and recipe.max_atoms is None and recipe.batch_structures:
        mean_atoms = float(store.stats[args.source]["mean_atoms"])
        max_atoms = max(int(recipe.batch_structures * mean_atoms), int(store.n_atoms.max()))
    data = DataConfig(
        store=str(args.store),
        holdout_families=tuple(args.holdout),
        max_atoms=max_atoms,
        val_max_structures=10**9,
    )
    splits = make_splits(store, data)
    mine = store.source_ids == store.sources.index(args.source)
    rng = np.random.default_rng(args.seed)

    def only_mine(idx: np.ndarray, cap: int | None = None) -> np.ndarray:
        idx = idx[mine[idx]]
        if cap is not None and len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        return idx

    train_idx = only_mine(splits.train)
    val_idx = only_mine(splits.val, args.val_structures)
    holdout_idx = only_mine(splits.holdout)
    by_family = {
        f: only_mine(holdout_idx[store.family_ids[holdout_idx] == store.families.index(f)],
                     args.val_structures)
        for f in args.holdout
    }  # fmt: skip

    def loader(idx: np.ndarray, train: bool) -> tuple[Any, Any]:
        s = sampler_for(store, idx, data, train=train, seed=args.seed, rank=0, world=1)
        settings = GraphSettings.from_stats(
            cutoff=CUTOFF, max_neighbours=None, heads=tuple(store.sources), stats=store.stats
        )
        return s, OneHead(loader_for(store, s, data, settings))

    model = build_model(args.model, store, args.source, model_changes)
    params = sum(p.numel() for p in model.parameters())
    ema = None
    if recipe.ema_decay:
        import copy

        ema = copy.deepcopy(model)
    t = replace(
        TrainConfig(),
        lr=recipe.lr,
        loss=recipe.loss,  # type: ignore[arg-type]
        energy_weight=recipe.energy_weight,
        force_weight=recipe.force_weight,
        force_weighting=recipe.force_weighting,  # type: ignore[arg-type]
        force_loss=recipe.force_loss,  # type: ignore[arg-type]
    )
    optimizer = make_optimizer(model, t)
    _, val_loader = loader(val_idx, train=False)
    cpu = torch.device("cpu")

    def validate(indices: np.ndarray) -> dict[str, float]:
        _, batches = loader(indices, train=False)
        m = evaluate(ema if ema is not None else model, batches, [args.source], cpu)
        return {k: v for k, v in m.items() if "/" not in k}

    sampler, train_loader = loader(train_idx, train=True)
    budget = 60 * args.minutes
    marks = [f * budget for f in CURVE]
    curve: list[dict[str, Any]] = []
    rss_before = peak_resident_mib()
    elapsed, step, epoch, structures = 0.0, 0, 0, 0
    print(
        f"{args.model} on {args.source}: {params:,} parameters, {len(train_idx):,} training "
        f"structures, budget {args.minutes:g} min",
        flush=True,
    )
    model.train()
    done = False
    while not done:
        sampler.set_epoch(epoch, 0)
        for g in train_loader:
            t0 = time.perf_counter()
            lr = lr_at(step, elapsed, budget, recipe)
            stats = train_step(model, [g], optimizer, t, lr=lr, device=cpu)
            if ema is not None:
                ema_update(ema, model, recipe.ema_decay or 0.0)
            elapsed += time.perf_counter() - t0
            step += 1
            structures += g.num_graphs
            if not math.isfinite(stats["loss"]):
                raise SystemExit(f"{args.model}: the loss diverged at step {step}")
            while marks and elapsed >= marks[0]:
                marks.pop(0)
                point = {"seconds": elapsed, "step": step, **validate(val_idx)}
                curve.append(point)
                print(
                    f"  {elapsed:6.0f} s  step {step:6d}  val E "
                    f"{point.get('energy_mae_meV_per_atom', float('nan')):7.2f} meV/atom  "
                    f"F {point.get('forces_mae_meV_per_A', float('nan')):7.1f} meV/Å",
                    flush=True,
                )
                model.train()
            if not marks:
                done = True
                break
        else:
            epoch += 1
    final = curve[-1]
    result: dict[str, Any] = {
        "model": args.model,
        "source": args.source,
        "recipe": recipe.__dict__,
        "model_changes": model_changes,
        "max_atoms": max_atoms,
        "parameters": params,
        "budget_seconds": budget,
        "threads": args.threads,
        "train_structures": len(train_idx),
        "val_structures": len(val_idx),
        "holdout_families": args.holdout,
        "holdout_structures": len(holdout_idx),
        "steps": step,
        "epochs": structures / max(len(train_idx), 1),
        "curve": curve,
        "val": {k: v for k, v in final.items() if k not in ("seconds", "step")},
        "peak_rss_mib": peak_resident_mib(),
        "peak_rss_rise_mib": peak_resident_mib() - rss_before,
    }
    # each held-out family on its own (all of them together would be dominated by the
    # largest errors), and the families' structures pooled as before
    result["holdout_structures_by_family"] = {f: len(i) for f, i in by_family.items()}
    result["holdout_by_family"] = {f: validate(i) for f, i in by_family.items() if len(i)}
    if len(holdout_idx):
        result["holdout"] = validate(np.concatenate([i for i in by_family.values()]))
    scored = ema if ema is not None else model
    graphs = [g for g, _ in zip(val_loader, range(8), strict=False)]
    singles = []
    for k in val_idx[:64]:
        from matscale.data.batch import collate, graph_sample

        singles.append(collate([graph_sample(store[int(k)], CUTOFF, source=0)]))
    result.update(inference_speed(scored, singles, graphs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)


if __name__ == "__main__":
    main()
