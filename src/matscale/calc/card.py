"""The model card: a Markdown page written beside every exported model (``model.md``).

It says what the model is (architecture, size, cutoff), what it learned from (heads, their
elements and structure counts, data statistics), how well it does (validation, test and
held-out errors per source), what training cost and on what, and what it is not for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ase.data import chemical_symbols

#: Metric name fragments and their column titles, in the card's order.
_TARGETS = (
    ("energy_mae_meV_per_atom", "E MAE (meV/atom)"),
    ("forces_mae_meV_per_A", "F MAE (meV/Å)"),
    ("stress_mae_meV_per_A3", "σ MAE (meV/Å³)"),
)
_SPLITS = (("", "val"), ("test/", "test"), ("holdout/", "held-out"))


#: The first words of every model card: an export replaces a file only if it starts so.
CARD_TITLE = "# matscale model card"


def model_card(blob: dict[str, Any], *, name: str = "model.pt") -> str:
    """The Markdown card of a model file's dictionary (as :mod:`~matscale.calc.model_file`
    writes it)."""
    cfg = blob["model_config"]
    graph = blob["graph"]
    stats = blob.get("stats", {})
    run = blob.get("run_config", {})
    n_params = sum(int(t.numel()) for k, t in blob["state_dict"].items() if is_parameter(k))
    heads = list(graph["heads"])
    shipped = blob.get("shipped_as")
    load_text = (
        f"`MatscaleCalculator.pretrained({shipped!r})` (head `{blob.get('default_head')}` unless "
        f"`head=` picks another) or `matscale.pretrained.load({shipped!r})`, offline"
        if shipped
        else f"`MatscaleCalculator.from_file({name!r}, head=...)` or "
        f"`matscale eval/md/relax {name}`"
    )
    lines = [
        f"{CARD_TITLE}: `{name}`",
        "",
        f"Format `{blob['format']}`, written by matscale {blob.get('version', '?')}. Load it with "
        f"{load_text}.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | EGNN (matscale), width {cfg['width']}, depth {cfg['depth']}, "
        f"{cfg.get('n_radial', '?')} radial functions, activation {cfg.get('activation', '?')} |",
        f"| parameters | {n_params:,} |",
        f"| forces | {_force_text(cfg['force_head'])} |",
        f"| cutoff | {graph['cutoff']:g} Å; neighbours kept per atom: "
        f"{graph['max_neighbours'] or 'all within the cutoff'} |",
        f"| dtype | {graph['dtype']} |",
        f"| mean neighbour count (normalisation) | {cfg.get('avg_neighbours', 0):.1f} |",
        f"| short-range prior | {_prior_text(cfg, graph)} |",
        "",
        "## Heads: levels of theory and what each saw",
        "",
        "A structure is read by one head; pick it by name. Elements outside a head's list are "
        "refused, not guessed.",
        "",
        "| head | labelled by | elements | training structures | structures in store | "
        "mean atoms | force RMS (eV/Å) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    labellers = blob.get("labelled_by", {})
    train_counts = blob.get("train_structures", {})
    for h, elements in zip(heads, graph["elements"], strict=True):
        st = stats.get(h, {})
        symbols = " ".join(chemical_symbols[int(z)] for z in elements) or "—"
        who = f"{labellers[h]}, a model (teacher)" if h in labellers else "its source's calculator"
        # a head absent from this run's data (fine-tuning kept it) has no statistics here
        mean = f"{st['mean_atoms']:.1f}" if "mean_atoms" in st else "—"
        rms = f"{st['force_rms_eV_per_A']:.3f}" if "force_rms_eV_per_A" in st else "—"
        lines.append(
            f"| {h} | {who} | {symbols} | {_count(train_counts.get(h))} "
            f"| {_count(st.get('structures'))} | {mean} | {rms} |"
        )
    start = run.get("train", {}).get("init_from")
    if start:
        frozen = run.get("train", {}).get("freeze") == "backbone"
        kept = (
            "kept what it had learnt: the backbone was frozen"
            if frozen
            else "kept its readout, but the backbone it reads was tuned on this data, so its "
            "errors may have changed (forgetting: docs/training.md, --replay)"
        )
        lines += [
            "",
            f"Counts and statistics are this run's data. It was fine-tuned from `{start}`, whose "
            f"card gives what each of its heads saw before (a head with — had no data here and "
            f"{kept}).",
        ]
    holdout = list(run.get("data", {}).get("holdout_families", []))
    lines += ["", "## Errors", "", *_error_table(blob.get("metrics", {}), heads, holdout)]
    sizes = blob.get("split_structures")
    if sizes:  # files exported before the sizes were saved say nothing rather than guess
        lines += [
            "",
            f"Structures behind each column: validation {sizes['val']:,}, test "
            f"{sizes['test']:,}, held out {sizes['holdout']:,} (training {sizes['train']:,}).",
        ]
    lines += [""]
    lines += _training_section(blob, run)
    lines += [
        "## Intended use and known limits",
        "",
        "- Energies (eV), forces (eV/Å) and stress (eV/Å³, ASE's sign) at the level of theory "
        "of the chosen head, for structures like those the head was trained on.",
        "- Accuracy outside the training distribution is lower than the validation figures "
        "say: compare the held-out column where the run had one, and score the model on your "
        "own structures (`matscale eval`) before trusting it.",
        "- Far from equilibrium (large forces, atoms closer than in training) errors grow "
        "fastest: short contacts are thin in every training set.",
        "- No long-range electrostatics, charges or spins: interactions end at the cutoff.",
        "- Heads are different levels of theory: energies of two heads are not comparable.",
    ]
    if cfg["force_head"] == "direct":
        lines.append(
            "- Forces come from a direct head: they are not the gradient of the energy, so "
            "NVE dynamics drift and there is no stress."
        )
    return "\n".join(lines) + "\n"


def is_parameter(key: str) -> bool:
    """Whether a model file's state-dict ``key`` is a learned parameter (not a buffer of
    the data statistics)."""
    return key.split(".")[-1] not in ("reference_energy", "energy_scale", "force_scale")


def _force_text(head: str) -> str:
    if head == "conservative":
        return "conservative: F = −∂E/∂x, stress = (1/V) ∂E/∂ε (energy-conserving)"
    return "direct equivariant head (not −∂E/∂x; no stress)"


def _count(n: Any) -> str:
    return f"{int(n):,}" if n is not None else "—"


def _prior_text(cfg: dict[str, Any], graph: dict[str, Any]) -> str:
    """The pair prior, and the contacts inference warns about."""
    prior = (
        "ZBL repulsion below 0.75x the sum of covalent radii"
        if cfg.get("pair_repulsion", False)
        else "none (saved before the pair prior existed)"
    )
    shortest = [d for head in graph.get("shortest", []) for _, _, d in head]
    warn = (
        f"; contacts shorter than the training data's shortest per element pair "
        f"(from {min(shortest):.2f} Å) are warned about as extrapolation"
        if shortest
        else ""
    )
    return prior + warn


def _error_table(metrics: dict[str, float], heads: list[str], holdout: list[str]) -> list[str]:
    """MAE per source and split: validation, test, held-out families."""
    columns = [
        (prefix, key, f"{split} {title}")
        for key, title in _TARGETS
        for prefix, split in _SPLITS
        if any(_split_of(k) == prefix and k.endswith(key) for k in metrics)
    ]
    if not columns:
        return ["No errors were recorded with this model."]
    out = [
        "| source | " + " | ".join(c[2] for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for source in [*heads, "all"]:
        tag = "" if source == "all" else f"{source}/"
        cells = [metrics.get(f"{prefix}{tag}{key}") for prefix, key, _ in columns]
        if any(c is not None for c in cells):
            out.append(
                f"| {source} | "
                + " | ".join("—" if c is None else f"{c:.1f}" for c in cells)
                + " |"
            )
    out += [
        "",
        "Validation and test are random splits of the same data (optimistic); held-out "
        "columns are whole families of structures kept out of training: "
        f"{', '.join(holdout) or 'none in this run'}.",
    ]
    return out


def _parts_text(blob: dict[str, Any]) -> str:
    """What a combined store was made of, and which part kept the split of an earlier run
    (whose validation and test structures this run therefore never trained on)."""
    parts = blob.get("store_parts")
    if not parts:
        return ""
    said = []
    for p in parts:
        kept = p.get("kept_split")
        how = (
            f"the split of the run it was trained with kept ({kept.get('split')}, seed "
            f"{kept.get('split_seed')}, held out {list(kept.get('holdout_families', []))})"
            if kept
            else "split by these settings"
        )
        said.append(f"`{Path(p['store']).name}` ({p['structures']:,} structures, {how})")
    return "; combined from " + " and ".join(said)


def _split_of(metric: str) -> str:
    """``test/`` or ``holdout/`` for a metric of that split, ``""`` for validation."""
    return next((p for p, _ in _SPLITS if p and metric.startswith(p)), "")


def _training_section(blob: dict[str, Any], run: dict[str, Any]) -> list[str]:
    seconds = blob.get("train_seconds")
    hw = blob.get("hardware", {})
    train = run.get("train", {})
    data = run.get("data", {})
    out = ["## Training", "", "| | |", "|---|---|"]
    steps = train.get("steps", "?")
    if train.get("schedule") == "cosine-time" and train.get("max_minutes"):
        # the plan, not a claim: a run that stopped early, or whose warm-up outlasted it,
        # did not anneal (the card said "annealed" of a run still warming up)
        plan = (
            f"learning rate decayed over {train['max_minutes']} min or {steps} steps, "
            "whichever came first"
        )
        budget_s = 60 * float(train["max_minutes"])
        step, seconds = blob.get("step"), blob.get("train_seconds")
        if (
            isinstance(step, int)
            and isinstance(steps, int)
            and isinstance(seconds, int | float)
            and step < steps
            and seconds < 0.95 * budget_s
        ):
            plan += f"; it stopped after {seconds / 60:.2g} min, before either"
    else:
        plan = f"planned {steps}"
    out.append(f"| steps | {blob.get('step', '?')} ({plan}) |")
    if train.get("init_from"):  # fine-tuned or continued: its start's own training is not here
        out.append(f"| started from | `{train['init_from']}` (steps and time above are this "
                   "run's only) |")  # fmt: skip
    if seconds is not None:
        out.append(f"| wall time | {seconds / 60:.1f} min |")
    if hw:
        where = f"{hw.get('processes', 1)} process(es) on {hw.get('device', '?')}"
        if hw.get("gpu"):
            where += f" ({hw['gpu']})"
        else:
            where += f" ({hw.get('cpu', '?')}, {hw.get('threads_per_process', '?')} threads each)"
        out.append(f"| hardware | {where}; torch {hw.get('torch', '?')} |")
    out.append(
        f"| optimiser | AdamW, lr {train.get('lr', '?')}, {train.get('schedule', '?')} schedule, "
        f"{train.get('loss', '?')} loss (forces: {train.get('force_loss') or train.get('loss')}), "
        f"weights energy {train.get('energy_weight')} / forces {train.get('force_weight')} / "
        f"stress {train.get('stress_weight')}, EMA {train.get('ema_decay')} |"
    )
    out.append(
        f"| data | store `{data.get('store', '?')}`, split {data.get('split', '?')}, "
        f"fraction {data.get('fraction', 1.0)}, held-out families "
        f"{list(data.get('holdout_families', [])) or 'none'}{_parts_text(blob)} |"
    )
    precision = run.get("parallel", {}).get("precision", "fp32")
    out += [f"| precision | {precision} |", ""]
    return out
