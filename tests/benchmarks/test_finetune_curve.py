"""The fine-tuning curve's pieces on a tiny model: its data, each arm, its scores."""

from pathlib import Path

import pytest

from tests.benchmarks import load_benchmark
from tests.calc.conftest import train_tiny

curve = load_benchmark("finetune_curve")


def test_every_arm_trains_and_is_scored_on_the_new_system(tiny_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("tblite")
    data = curve.make_data(14, seed=1)
    assert len(data) == 14 and all(s.source == curve.SOURCE for s in data)
    assert {s.family for s in data} <= {p[0] for p in curve.PROTOTYPES}
    model = train_tiny(tiny_store, tmp_path / "pre")
    store = curve.pack_store(data[:10], tmp_path / "n10", cutoff=5.0)
    for arm in ("finetune", "scratch"):
        tuned = curve.run_arm(arm, str(model), store, tmp_path / "n10", steps=3)
        scores = curve.test_errors(tuned, data[10:])
        assert scores["forces_mae_meV_per_A"] > 0 and scores["energy_mae_meV_per_atom"] > 0
    # the tiny model never saw these elements: a frozen backbone would keep their embeddings
    # random, which fine-tuning refuses; the benchmark records the refusal as the arm's row
    row = curve.arm_row("finetune-frozen", str(model), store, tmp_path / "n10", 3, data[10:])
    assert "never saw" in row["refused"] and "forces_mae_meV_per_A" not in row
