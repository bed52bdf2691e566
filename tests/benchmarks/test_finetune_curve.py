"""The fine-tuning curve's pieces on a tiny model: its data, each arm, its scores."""

import importlib.util
from pathlib import Path

import pytest

from tests.calc.conftest import train_tiny

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "finetune_curve.py"
_spec = importlib.util.spec_from_file_location("benchmark_finetune_curve", SCRIPT)
assert _spec is not None and _spec.loader is not None
curve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(curve)


def test_every_arm_trains_and_is_scored_on_the_new_system(tiny_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("tblite")
    data = curve.make_data(14, seed=1)
    assert len(data) == 14 and all(s.source == curve.SOURCE for s in data)
    assert {s.family for s in data} <= {p[0] for p in curve.PROTOTYPES}
    model = train_tiny(tiny_store, tmp_path / "pre")
    store = curve.pack_store(data[:10], tmp_path / "n10", cutoff=5.0)
    for arm in ("finetune-frozen", "scratch"):
        tuned = curve.run_arm(arm, str(model), store, tmp_path / "n10", steps=3)
        scores = curve.test_errors(tuned, data[10:])
        assert scores["forces_mae_meV_per_A"] > 0 and scores["energy_mae_meV_per_atom"] > 0
