"""A tiny trained model (two heads: periodic EMT metals 'emt', molecules 'mol'), shared by the
calc tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from matscale.config import load
from matscale.train.loop import train


def train_tiny(store: Path, out: Path, *extra: str) -> Path:
    """Train a 16-wide, 2-layer model on ``store`` for a few steps; returns its model.pt."""
    cfg = load(
        None,
        [
            f"data.store={store}",
            f"out_dir={out}",
            "name=tiny",
            "model.width=16",
            "model.depth=2",
            "model.cutoff=4.0",
            "data.max_atoms=64",
            "train.steps=6",
            "train.eval_every=6",
            "train.checkpoint_every=6",
            "train.warmup_steps=2",
            *extra,
        ],
    )
    train(cfg, progress=False)
    return cfg.run_dir / "model.pt"


@pytest.fixture(scope="session")
def tiny_model(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt of a conservative model trained for 6 steps on the tiny store."""
    return train_tiny(tiny_store, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_direct_model(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt of a direct-force model trained for 6 steps on the tiny store."""
    return train_tiny(tiny_store, tmp_path_factory.mktemp("tiny-direct"), "model.force_head=direct")
