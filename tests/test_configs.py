"""Every run config in configs/ parses into a valid RunConfig (a typo in a documented recipe is
a user's first failure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from matscale import pretrained
from matscale.config import load

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_parses(path: Path) -> None:
    cfg = load(path, [])
    assert cfg.name and cfg.data.store


def test_the_continued_foundation_run_starts_from_a_shipped_model() -> None:
    cfg = load(CONFIGS[0].parent / "foundation-v2.yaml", [])
    assert cfg.train.init_from in pretrained.available()
    # its store keeps the starting model's split: it is the combined store of the recipe
    assert (
        "--keep-split matscale-foundation-v1"
        in (CONFIGS[0].parent / "foundation-v2.yaml").read_text()
    )
