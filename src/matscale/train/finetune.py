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
"""

from __future__ import annotations

from dataclasses import replace

from matscale.calc.model_file import Potential, load_potential
from matscale.config import RunConfig
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from matscale.errors import ConfigError
from matscale.models.egnn import EGNN, EGNNConfig, set_statistics

#: Per-head buffers of the EGNN, indexed by head along their first axis.
HEAD_BUFFERS = ("reference_energy", "energy_scale", "force_scale")


def trained_potential(cfg: RunConfig) -> Potential:
    """The trained model ``train.init_from`` names: a model file, or a shipped model."""
    from matscale import pretrained
    from matscale.errors import DataError

    try:
        return load_potential(pretrained.model_file(str(cfg.train.init_from)))
    except DataError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None


def finetune_start(cfg: RunConfig, store: Store) -> tuple[EGNNConfig, EGNN, GraphSettings]:
    """The model config, model (trained weights in, new heads initialised, statistics set) and
    inference transform of a fine-tuning run of ``cfg`` on ``store``."""
    pre = trained_potential(cfg)
    old = pre.model.config  # its cutoff against the store's: check_config_for_store, after
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
    graph = _merged_graph(pre.graph, model_cfg.heads, store)
    return model_cfg, model, graph


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
