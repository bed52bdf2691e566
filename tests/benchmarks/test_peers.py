"""The peer benchmark's own parts: the paper's EGNN as written there is a correct energy model
(invariant energy; conservative forces are −∂E/∂x), and one peer run goes end to end."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from matscale.models.physics import predict
from tests.physics.structures import graph, molecular, periodic, random_rotation

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))
from paper_egnn import PaperEGNN, PaperEGNNConfig  # noqa: E402


def _model(force_head: str) -> PaperEGNN:
    torch.manual_seed(0)
    cfg = PaperEGNNConfig(width=16, depth=3, force_head=force_head)  # type: ignore[arg-type]
    return PaperEGNN(cfg, energy_scale=1.0, force_scale=1.0).double()


@pytest.mark.parametrize("force_head", ["direct", "conservative"])
def test_paper_egnn_energy_is_invariant(force_head: str) -> None:
    model = _model(force_head)
    g = graph(molecular())
    rot = torch.from_numpy(random_rotation(1))
    turned = replace(g, positions=g.positions @ rot.T + 1.5)
    e0, e1 = model(g)["energy"], model(turned)["energy"]
    torch.testing.assert_close(e0, e1, rtol=1e-10, atol=1e-10)


def test_paper_egnn_conservative_forces_are_minus_the_gradient() -> None:
    model = _model("conservative")
    g = graph(periodic(), molecular())
    forces = predict(model, g)["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (3, 2), (10, 1)]:
        energies = []
        for sign in (1, -1):
            pos = g.positions.clone()
            pos[atom, axis] += sign * h
            energies.append(model(replace(g, positions=pos))["energy"].sum())
        fd = -(energies[0] - energies[1]) / (2 * h)
        torch.testing.assert_close(forces[atom, axis], fd.to(forces.dtype), rtol=1e-5, atol=1e-7)


def test_one_peer_run_end_to_end(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    cmd = [
        sys.executable, str(PEERS / "train_peer.py"), "--model", "paper-egnn", "--source", "emt",
        "--store", str(tiny_store), "--minutes", "0.05", "--out", str(out), "--threads", "1",
        "--holdout", "strained",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["steps"] > 0 and len(r["curve"]) == 6
    assert r["val"]["forces_mae_meV_per_A"] > 0 and r["inference_atoms_per_s_batched"] > 0
    assert r["holdout_structures"] > 0 and r["holdout"]["forces_mae_meV_per_A"] > 0
    assert r["holdout_by_family"]["strained"]["forces_mae_meV_per_A"] > 0


def test_grid_tables_pick_the_best_mace_per_budget_and_compare_every_family() -> None:
    import run as grid

    def result(model: str, minutes: float, val_f: float, held: float, speed: float) -> dict:
        return {
            "model": model, "source": "emt-metals", "budget_seconds": 60 * minutes,
            "parameters": 1000, "epochs": 1.0,
            "val": {"forces_mae_meV_per_A": val_f, "energy_mae_meV_per_atom": 1.0},
            "holdout_by_family": {
                f: {"forces_mae_meV_per_A": held} for f in ("surface", "cluster", "distorted")
            },
            "inference_atoms_per_s_single": speed, "inference_atoms_per_s_batched": speed,
        }  # fmt: skip

    results = [
        result("matscale", 10, 20.0, 50.0, 6000.0),
        result("mace-L0-32", 10, 25.0, 40.0, 1000.0),
        result("mace-L1-32", 10, 30.0, 30.0, 300.0),  # better held out, worse validation
        result("mace-L1-32", 5, 10.0, 10.0, 300.0),  # another budget: not compared
    ]
    assert grid.best_mace(results, "emt-metals", 600.0)["model"] == "mace-L0-32"
    (v,) = [x for x in grid.verdict(results, "emt-metals") if x["minutes"] == 10]
    assert v["best_mace"] == "mace-L0-32" and v["inference_speed_ratio"] == 6.0
    assert v["error_ratios"]["val_forces"] == 0.8 and v["error_ratios"]["distorted_forces"] == 1.25
    assert not v["met"]  # a held-out family is behind
    text = grid.table(results, "emt-metals")
    assert "| 10 | mace-L0-32 (best MACE) |" in text and "| – |" in text  # md-1500K: no run


def test_ablation_table_gives_epochs_and_ratios_to_the_default() -> None:
    import ablations

    def row(variant: str, distorted: float, val_f: float) -> dict:
        return {
            "variant": variant, "source": "emt-metals", "parameters": 1000, "steps": 2000,
            "epochs": 1.5, "val": {"forces_mae_meV_per_A": val_f, "energy_mae_meV_per_atom": 2.0},
            "holdout_by_family": {"distorted": {"forces_mae_meV_per_A": distorted}},
        }  # fmt: skip

    text = ablations.table([row("default", 400.0, 40.0), row("other", 100.0, 50.0)], "emt-metals")
    assert "| default | 1,000 | 2,000 | 1.5 | – | – | 400.0 | – | 2.00 | 40.0 |" in text
    assert "| other | 1,000 | 2,000 | 1.5 | – | – | 100.0 (0.25) | – | 2.00 | 50.0 (1.25) |" in text


def test_the_benchmark_trains_matscale_as_configs_demo_yaml_does() -> None:
    """The README's comparison is of the default run: model and recipe come from its file."""
    import train_peer

    from matscale.config import load

    demo = load(train_peer.DEMO_CONFIG)
    for name in ("matscale", "matscale-direct"):
        r = train_peer.recipe_for(name)
        mine = (r.lr, r.loss, r.force_loss, r.energy_weight, r.force_weight, r.ema_decay)
        t = demo.train
        assert mine == (t.lr, t.loss, t.force_loss, t.energy_weight, t.force_weight, t.ema_decay)
        assert r.max_atoms == demo.data.max_atoms and r.force_weighting == t.force_weighting
