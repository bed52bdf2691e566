"""Validation metrics: MAE of energy per atom (meV/atom), forces (meV/Å), stress (meV/Å³),
per source and over all sources, exact over every structure of the split and every process."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch

from matscale.data.atomgraph import AtomGraph
from matscale.models.physics import predict
from matscale.parallel.distributed import all_sum
from matscale.train.loss import error_sums

UNITS = {"energy": "meV_per_atom", "forces": "meV_per_A", "stress": "meV_per_A3"}


def evaluate(
    model: torch.nn.Module,
    batches: Iterable[AtomGraph],
    sources: list[str],
    device: torch.device,
    *,
    stress: bool = False,
    autocast: AbstractContextManager | None = None,
    reduce: bool = True,
) -> dict[str, float]:
    """MAEs keyed ``"<target>_mae_<unit>"`` (all sources) and ``"<source>/<target>_mae_..."``.

    With ``reduce``, error sums are added over processes (each evaluated its own part);
    without, every process evaluated the whole set (FSDP's lockstep) and keeps its own sums.
    """
    totals: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    for g in batches:
        g = g.to(device)
        with autocast or nullcontext():
            pred = predict(model, g, forces=True, stress=stress)
        for name, sums in error_sums(pred, g, len(sources)).items():
            totals[name] = totals.get(name, 0) + sums
    model.train(was_training)
    metrics: dict[str, float] = {}
    for name, sums in totals.items():
        sums = all_sum(sums) if reduce else sums
        unit = UNITS[name]
        if sums[:, 1].sum() > 0:
            metrics[f"{name}_mae_{unit}"] = float(1000 * sums[:, 0].sum() / sums[:, 1].sum())
        for s, source in enumerate(sources):
            if sums[s, 1] > 0:
                metrics[f"{source}/{name}_mae_{unit}"] = float(1000 * sums[s, 0] / sums[s, 1])
    return metrics
