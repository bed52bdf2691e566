"""Learning-rate schedules: pure functions of the step (plus the paper's plateau rule)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, *, lr: float, steps: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup`` steps, then ``constant`` or ``cosine`` decay to ``lr · min_ratio`` at ``steps``.
    (``plateau`` runs are ``constant`` here, scaled by :class:`Plateau`.)"""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if kind != "cosine":
        return lr
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
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
