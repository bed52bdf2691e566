"""Learning-rate schedules: pure functions of the step (plus the paper's plateau rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_progress(step: int, *, steps: int, warmup: int, time_fraction: float = 0.0) -> float:
    """How far the decay after warm-up has gone, 0..1: the larger of the steps' share
    ``(step − warmup) / (steps − warmup)`` and ``time_fraction``, the share of a wall-clock
    budget used. So a run with both budgets ends annealed by whichever runs out first."""
    by_steps = (step - warmup) / max(1, steps - warmup)
    return min(1.0, max(by_steps, time_fraction, 0.0))


def lr_at(
    step: int,
    *,
    lr: float,
    steps: int,
    warmup: int,
    kind: str,
    min_ratio: float,
    time_fraction: float = 0.0,
) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup`` steps, then ``constant``, or a cosine decay (``cosine``, ``cosine-time``) to
    ``lr · min_ratio`` at ``steps`` or, given ``time_fraction``, at the end of the time budget
    if that comes first (see :func:`cosine_progress`). (``plateau`` runs are ``constant``
    here, scaled by :class:`Plateau`.)"""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if kind not in ("cosine", "cosine-time"):
        return lr
    progress = cosine_progress(step, steps=steps, warmup=warmup, time_fraction=time_fraction)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class Plateau:
    """Reduce-on-plateau (the paper: factor 0.5, patience 5, floor 1e-5 at lr 1e-3)."""

    patience: int
    factor: float = 0.5
    floor: float = 0.0
    scale: float = 1.0
    best: float = math.inf
    bad: int = 0

    def update(self, metric: float) -> None:
        """Record a validation metric; halve ``scale`` after ``patience`` evaluations without
        improvement."""
        if metric < self.best:
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            self.scale = max(self.scale * self.factor, self.floor)
            self.bad = 0
