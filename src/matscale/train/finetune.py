"""The model a fine-tuning run starts from: a trained model, with one head per source of the
new data (an existing head by name, or a new one), optionally with its backbone frozen.

``train.init_from`` names the trained model (a model file or a shipped model's name). The
architecture, cutoff and neighbour normalisation are the trained model's (``model.*`` of the
run config is not used); every head it had is kept, so it still answers for its old levels of
theory. A source of the new store that names an existing head tunes that head, keeping its
reference energies (the same level of theory); any other source gets a new head whose readout
starts from the trained model's default head and whose reference energies and scales come
from the new store's statistics. The elements each head accepts are the union of what it saw
before and what the new data holds.

Replay (:func:`with_replay`) trains on pretraining data alongside the new data, so that the
old heads and the backbone they share do not drift: the two stores are combined
(:func:`~matscale.data.combine.combine_stores`, no copy) and the sampler draws a fixed share of
every epoch from the pretraining sources (``data.mixture``).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from matscale.calc.model_file import Potential, load_potential
from matscale.config import DataConfig, RunConfig
from matscale.data.store import Store
from matscale.data.transform import GraphSettings, element_symbol
from matscale.errors import ConfigError
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics

#: Per-head buffers of the EGNN, indexed by head along their first axis.
HEAD_BUFFERS = ("reference_energy", "energy_scale", "force_scale")


def trained_potential(cfg: RunConfig, *, last_use: bool = False) -> Potential:
    """The trained model ``train.init_from`` names: a model file, or a shipped model. Read
    once for the checks a fine-tuning run makes before it starts and for its start, which is
    the ``last_use``: the copy is then let go (a large model would otherwise be held twice
    for the whole run)."""
    from matscale import pretrained
    from matscale.errors import DataError

    try:
        path = pretrained.model_file(str(cfg.train.init_from))
        stat = path.stat()
        pre = _read_potential(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except DataError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    if last_use:
        _read_potential.cache_clear()
    return pre


@functools.lru_cache(maxsize=1)
def _read_potential(path: str, mtime_ns: int, size: int) -> Potential:
    """:func:`load_potential` of ``path``, read again when the file changed (its time and
    size are part of the key)."""
    return load_potential(path)


#: The loss settings (``train.*``) a fine-tuning run keeps from the trained model's own run
#: unless given: the foundation model learnt stress at weight 30, and a fine-tuning run at
#: the defaults (stress weight 0) left the new data's stress labels unused and made its
#: stress worse (1.1 to 2.5 meV/Å³ held out on its own level of theory).
TRAINED_LOSS_KEYS = (
    "loss",
    "force_loss",
    "huber_delta",
    "force_weighting",
    "energy_weight",
    "force_weight",
    "stress_weight",
)


def with_trained_settings(cfg: RunConfig, given: set[str]) -> RunConfig:
    """``cfg`` (a run from ``train.init_from``) with the trained model's loss settings
    (:data:`TRAINED_LOSS_KEYS`) for those not in ``given`` (the dotted keys the user set, e.g.
    ``train.stress_weight``). A ``model.*`` key in ``given`` whose value is not the trained
    model's own is refused: the run keeps the trained architecture, and a setting equal to the
    default (``model.width=128``) would otherwise pass :func:`_check_no_architecture`
    unnoticed."""
    pre = trained_potential(cfg)
    own = asdict(pre.model.config)
    asked = asdict(cfg.model)
    differ = sorted(
        f"model.{k}={asked[k]!r} (the model's: {own[k]!r})"
        for k in (key.removeprefix("model.") for key in given if key.startswith("model."))
        if k in asked and k != "heads" and asked[k] != own.get(k)
    )
    if differ:
        raise ConfigError(
            f"{', '.join(differ)}: fine-tuning keeps the architecture of "
            f"{cfg.train.init_from}; remove these settings (or train a new model)"
        )
    trained = pre.info.get("run_config", {}).get("train", {})
    kept = {k: trained[k] for k in TRAINED_LOSS_KEYS if k in trained and f"train.{k}" not in given}
    return replace(cfg, train=replace(cfg.train, **kept))


def _check_no_architecture(cfg: RunConfig, trained: EGNNConfig) -> None:
    """Refuse ``model.*`` settings a run from ``train.init_from`` would ignore: those that
    differ from both the defaults and the trained model's own (a run's config.yaml reused as
    a template, say, asking for a width the trained model does not have)."""
    default = asdict(EGNNConfig())
    own = asdict(trained)
    asked = asdict(cfg.model)
    ignored = [f"model.{k}={v!r}" for k, v in asked.items()
               if k != "heads" and v != default[k] and v != own.get(k)]  # fmt: skip
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)}: a run from train.init_from keeps the architecture of "
            f"{cfg.train.init_from}; remove these settings (or train a new model without "
            "train.init_from)"
        )


def finetune_start(cfg: RunConfig, store: Store) -> tuple[EGNNConfig, EGNN, GraphSettings]:
    """The model config, model (trained weights in, new heads initialised, statistics set) and
    inference transform of a fine-tuning run of ``cfg`` on ``store``."""
    pre = trained_potential(cfg, last_use=True)
    old = pre.model.config  # its cutoff against the store's: check_config_for_store, after
    _check_no_architecture(cfg, old)
    added = tuple(s for s in store.sources if s not in old.heads)
    model_cfg = replace(old, heads=old.heads + added)
    model = EGNN(model_cfg)
    state = pre.model.state_dict()
    source_head = old.heads.index(pre.info.get("default_head") or old.heads[0])
    n_old = len(old.heads)
    new_state = model.state_dict()
    for key, value in state.items():
        if key.startswith("readout.heads.") or key in HEAD_BUFFERS:
            continue
        new_state[key] = value
    for k in range(len(model_cfg.heads)):  # old heads keep theirs; new ones start from one
        j = k if k < n_old else source_head
        for key, value in state.items():
            if key.startswith(f"readout.heads.{j}."):
                new_state[f"readout.heads.{k}." + key.split(".", 3)[3]] = value
    for name in HEAD_BUFFERS:
        new_state[name][:n_old] = state[name]
    model.load_state_dict(new_state)
    set_statistics(model, {h: store.stats[h] for h in added})  # new heads: the new data's
    _check_frozen_elements(cfg, pre.graph, store)
    for k, h in enumerate(old.heads):  # a kept head meeting elements it never saw
        if h in store.sources:
            _fit_new_references(model, k, pre.graph.elements[k], store, h)
    graph = _merged_graph(pre.graph, model_cfg.heads, store)
    return model_cfg, model, graph


def _check_frozen_elements(cfg: RunConfig, trained: GraphSettings, store: Store) -> None:
    """Refuse a frozen backbone on data with an element the trained model never saw: its
    embedding (part of the backbone) would stay at its random start."""
    if cfg.train.freeze != "backbone":
        return
    known = {z for head in trained.elements for z in head}
    new = sorted({int(z) for st in store.stats.values() for z in st["elements"]} - known)
    if new:
        names = ", ".join(element_symbol(z) for z in new)
        raise ConfigError(
            f"{cfg.data.store} holds {names}, which {cfg.train.init_from} never saw: their "
            "embeddings are untrained, and train.freeze=backbone (--freeze-backbone) would keep "
            "them so; fine-tune the whole model"
        )


def _fit_new_references(
    model: EGNN, head: int, known: tuple[int, ...], store: Store, source: str
) -> None:
    """Reference energies (eV/atom) of head ``head`` for the elements of ``source`` in
    ``store`` it never saw, fitted by least squares on the source's energies with the head's
    own references of the elements it knew held fixed (the same level of theory: its zero of
    energy stays). A kept head left them at 0: a fine-tuning on Fe data for an EMT head
    without Fe gave 318 meV/atom of error against 51 as a new head."""
    from matscale.parallel.distributed import launch_position

    k = store.sources.index(source)
    new = sorted({int(z) for z in store.stats[source]["elements"]} - set(known))
    if not new:
        return
    ref = model.reference_energy[head].numpy()
    rows, residuals = [], []
    for i in np.flatnonzero(store.source_ids == k):
        s = store[int(i)]
        if s.energy is None:
            continue
        counts = np.bincount(np.asarray(s.numbers), minlength=ref.shape[0])
        rows.append([counts[z] for z in new])
        residuals.append(s.energy - float(counts @ ref))
    fallback = store.stats[source].get("reference_energy_eV", {})
    if rows:
        fitted, *_ = np.linalg.lstsq(np.array(rows, float), np.array(residuals), rcond=None)
        values = dict(zip(new, fitted.tolist(), strict=True))
    else:  # no energies to fit: the new data's own per-element fit, as a new head would
        values = {z: float(fallback.get(str(z), fallback.get(z, 0.0))) for z in new}
    for z, e in values.items():
        model.reference_energy[head, z] = e
    if launch_position().main:
        said = ", ".join(f"{element_symbol(z)} {e:.4g}" for z, e in values.items())
        print(
            f"head {source!r} meets element(s) it never saw; their reference energies, fitted "
            f"on the new data with the head's others fixed: {said} eV/atom"
        )


def _merged_graph(old: GraphSettings, heads: tuple[str, ...], store: Store) -> GraphSettings:
    """The trained model's transform with ``heads``; each head's elements are those it saw
    before and those of its source in ``store``."""
    new = GraphSettings.from_stats(
        cutoff=old.cutoff, max_neighbours=old.max_neighbours, heads=heads, stats=store.stats
    )
    elements, shortest = [], []
    for k, h in enumerate(heads):
        before = set(old.elements[old.heads.index(h)]) if h in old.heads else set()
        elements.append(tuple(sorted(before | set(new.elements[k]))))
        floors: dict[tuple[int, int], float] = {}
        for table in (
            old.shortest[old.heads.index(h)] if h in old.heads and old.shortest else (),
            new.shortest[k] if new.shortest else (),
        ):
            for a, b, d in table:  # the closest contact either data set held
                floors[(a, b)] = min(d, floors.get((a, b), d))
        shortest.append(tuple((a, b, d) for (a, b), d in sorted(floors.items())))
    return replace(
        new,
        elements=tuple(elements),
        dtype=old.dtype,
        shortest=tuple(shortest) if any(shortest) else (),
    )


def freeze_backbone(model: EGNN) -> int:
    """Leave only the readout heads trainable; returns how many parameters stay trainable."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("readout."))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: The name of the combined store a replaying run makes in its run directory.
REPLAY_STORE = "replay-store"


def with_replay(cfg: RunConfig, replay: str | Path, share: float) -> RunConfig:
    """``cfg`` (a fine-tuning run on ``cfg.data.store``) training on the union of its store and
    the pretraining store ``replay``, a share ``share`` of each epoch drawn from ``replay``'s
    sources and the rest from the new data's (the new sources evenly; the replayed ones as the
    pretraining run weighed them, its ``data.mixture``, or else by their sizes, so that a small
    source is not repeated dozens of times).

    The replayed store keeps the split its model was trained with (``split``, ``split_seed``,
    ``holdout_families`` of the model file's run config): its validation, test and held-out
    structures stay out of training, so the old heads' errors measure forgetting on data they
    never saw; the new data is split by ``cfg`` as it would be alone. The union is built once
    in the run directory and reused when the run resumes. Refused: a share outside (0, 1), a
    ``data.mixture`` set by hand, a replay source the trained model has no head for (there is
    nothing of it to keep), a source in both stores (its share could not be set)."""
    from matscale.data.combine import combine_stores
    from matscale.data.store import META
    from matscale.parallel.distributed import launch_position

    if not 0 < share < 1:
        raise ConfigError(f"the replay share must lie between 0 and 1 (exclusive), got {share}")
    if cfg.data.mixture is not None:
        raise ConfigError("data.mixture is set by the replay share; do not set both")
    new, old = Store(cfg.data.store), Store(replay)
    pre = trained_potential(cfg)
    heads = pre.model.config.heads
    foreign = sorted(set(old.sources) - set(heads))
    if foreign:
        raise ConfigError(
            f"replay store {replay}: sources {foreign} are not heads of {cfg.train.init_from} "
            f"(its heads: {list(heads)}); replay the data the model was trained on"
        )
    both = sorted(set(old.sources) & set(new.sources))
    if both:
        raise ConfigError(
            f"sources {both} are in both {cfg.data.store} and the replay store {replay}: the "
            "replay share cannot be set per store; pack the new data under another source name"
        )
    combined = cfg.run_dir / REPLAY_STORE
    if launch_position().main:  # one process combines; the others wait for it
        combine_stores([cfg.data.store, replay], combined, splits=[None, trained_split(pre)])
    else:
        _wait_for(combined / META)
    pre_data = pre.info.get("run_config", {}).get("data", {})
    weights = pre_data.get("mixture") or {s: float(np.sum(old.source_ids == k))
                                          for k, s in enumerate(old.sources)}  # fmt: skip
    replayed = {s: float(weights.get(s, 0.0)) for s in old.sources}
    total = sum(replayed.values()) or 1.0
    mixture = {s: (1 - share) / len(new.sources) for s in new.sources}
    mixture |= {s: share * w / total for s, w in replayed.items()}
    return replace(cfg, data=replace(cfg.data, store=str(combined), mixture=mixture))


def trained_split(pre: Potential) -> dict[str, Any]:
    """The split settings ``pre`` was trained with (``split``, ``split_seed``,
    ``holdout_families`` of its run config), for its store to keep in a combined store."""
    pre_data = pre.info.get("run_config", {}).get("data", {})
    defaults = DataConfig()
    return {
        "split": list(pre_data.get("split", defaults.split)),
        "split_seed": int(pre_data.get("split_seed", defaults.split_seed)),
        "holdout_families": list(pre_data.get("holdout_families", ())),
    }


def check_trained_store(pre: Potential, store: Store, *, model: str) -> None:
    """Refuse ``store`` as the store ``pre`` (named ``model``) was trained on unless its sources
    hold the same structures and atoms: its split is kept for the store given first to
    ``data combine --keep-split``, and another store split that way would not keep the model's
    validation and test structures out of training."""
    trained = {k: (v.get("structures"), v.get("atoms")) for k, v in pre.info["stats"].items()}
    given = {k: (v.get("structures"), v.get("atoms")) for k, v in store.stats.items()}
    if trained == given:
        return

    def counts(sources: dict[str, tuple[Any, Any]]) -> str:
        return ", ".join(f"{k} {n:,} structures" for k, (n, _) in sources.items())

    raise ConfigError(
        f"--keep-split {model}: {store.path} is not the store it was trained on (that one: "
        f"{counts(trained)}; this one: {counts(given)}); give the model's own store first, "
        "whose split the combined store keeps"
    )


def _wait_for(path: Path, timeout_s: float = 600.0) -> None:
    """Wait until ``path`` exists (written by the main process of the run)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ConfigError(f"{path} did not appear within {timeout_s:.0f} s (main process)")
        time.sleep(0.5)
