"""The planner: model state per backend and sharding, activations measured at small widths
and extrapolated, the CLI."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from matscale.config import load
from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.size import parameter_count
from matscale.parallel.planner import (
    HARDWARE,
    GiB,
    _calibration_graphs,
    activation_coefficients,
    model_costs,
    plan,
    saved_bytes,
)
from tests.benchmarks import load_benchmark

MODEL = EGNNConfig(width=48, depth=2, heads=("a",), cutoff=4.0)


@pytest.fixture(scope="module")
def costs():
    return model_costs(MODEL)


def _plan(costs, *overrides: str, devices: int = 4):
    cfg = load(None, ["model.width=48", "model.depth=2", "data.max_atoms=512", *overrides])
    return plan(cfg, HARDWARE["a100-80gb"], devices, costs, edges_per_atom=30, utilisation=0.2)


def test_model_state_per_backend_and_sharding(costs) -> None:
    p = parameter_count(MODEL)
    assert costs.parameters == p
    single = _plan(costs, "parallel.backend=none", devices=1)
    m = single.memory
    assert (m["weights"], m["gradients"], m["optimizer"], m["ema"]) == (4 * p, 4 * p, 8 * p, 4 * p)
    assert single.seconds["communication"] == 0
    ddp = _plan(costs, "parallel.backend=ddp")
    assert ddp.memory["ddp_buckets"] == 4 * p and ddp.seconds["communication"] > 0
    for stage, sharded in ((1, ("optimizer",)), (2, ("optimizer", "gradients")),
                           (3, ("optimizer", "gradients", "weights"))):  # fmt: skip
        ds = _plan(costs, "parallel.backend=deepspeed", f"parallel.zero_stage={stage}",
                   "train.ema_decay=null", "model.force_head=direct").memory  # fmt: skip
        for key in ("weights", "gradients"):
            assert ds[key] == pytest.approx(m[key] / (4 if key in sharded else 1))
        # DeepSpeed's optimizer also holds a float32 copy of the weights (measured at 1B
        # parameters: benchmarks/billion.py)
        assert ds["optimizer"] == pytest.approx(12 * p / 4)
    fsdp = _plan(costs, "parallel.backend=fsdp")
    for key in ("weights", "gradients", "optimizer", "ema"):
        assert fsdp.memory[key] == pytest.approx(m[key] / 4)
    # conservative forces by autograd keep every layer gathered (parallel/fsdp.py); written
    # out, or direct, the largest layer twice
    assert fsdp.memory["gathered_layer"] == pytest.approx(4 * p)
    for forces in ("parallel.explicit_forces=true", "model.force_head=direct"):
        one = _plan(costs, "parallel.backend=fsdp", forces).memory["gathered_layer"]
        assert one == 2 * 4 * costs.largest_layer < 4 * p
    assert fsdp.seconds["communication"] == pytest.approx(2 * ddp.seconds["communication"])
    offload = _plan(costs, "parallel.backend=fsdp", "parallel.cpu_offload=true")
    assert (
        offload.memory["optimizer"] == 0 and offload.host["optimizer"] == fsdp.memory["optimizer"]
    )
    bf16 = _plan(
        costs, "parallel.backend=deepspeed", "parallel.precision=bf16", "train.ema_decay=null"
    )
    assert bf16.memory["weights"] == 2 * p and bf16.memory["optimizer"] == pytest.approx(16 * p / 4)
    # activations and time grow with the batch; checkpointing adds a forward of FLOPs
    big = _plan(costs, "data.max_atoms=1024")
    assert big.memory["activations"] == pytest.approx(2 * _plan(costs).memory["activations"])
    assert big.flops == pytest.approx(2 * _plan(costs).flops)


def test_activations_extrapolate_exactly_in_width() -> None:
    """Measured at widths 8 and 16, predicted at 48: every saved tensor is linear in width."""
    per_atom, per_edge, _, _ = activation_coefficients(MODEL, checkpointing=False)
    model = EGNN(MODEL)
    for g in _calibration_graphs(MODEL.cutoff):
        measured = saved_bytes(model, g, conservative=True)
        predicted = per_atom * len(g.numbers) + per_edge * g.edge_index.shape[1]
        assert predicted == pytest.approx(measured, rel=0.01)
    direct = replace(MODEL, force_head="direct")
    _, d_edge, _, _ = activation_coefficients(direct, checkpointing=False)
    assert d_edge < 0.6 * per_edge  # no force pass kept for a second backward


def test_the_plan_verb(capsys) -> None:
    from matscale.cli import main

    args = ["plan", "model.width=64", "model.depth=2", "data.store=nowhere",
            "parallel.backend=fsdp", "--hardware", "h100-80gb", "--devices", "8"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "per device (h100-80gb, 8 devices)" in out and "fits" in out
    assert "edges per atom 40 (no store: assumed)" in out
    assert main([*args, "--utilisation", "2"]) == 2
    assert "--utilisation must lie in (0, 1]" in capsys.readouterr().err
    for bad in ("0", "inf", "nan"):  # inf gave a plan of "inf GiB"
        assert main([*args, "--edges-per-atom", bad]) == 2
        assert "--edges-per-atom must be a positive number" in capsys.readouterr().err
    assert main(["plan", "model.width=64", "data.store=nowhere", "--devices", "4"]) == 2
    assert "parallel.backend=none: one process trains alone" in capsys.readouterr().err
    # a small model's state was "0.00 GiB" and its step "0.00 TFLOP", on "1 devices"
    assert main(["plan", "model.width=32", "data.store=nowhere"]) == 0
    out = capsys.readouterr().out
    assert "(cpu-2core, 1 device)" in out and " MiB" in out and " GFLOP per device" in out
    assert "0.00 GiB" not in out and "0.00 TFLOP" not in out
    bf16 = ["plan", "model.width=64", "data.store=nowhere", "parallel.precision=bf16"]
    assert main(bf16) == 0 and "upper bound under bf16" in capsys.readouterr().out
    assert GiB == 2**30


def test_processes_on_this_machine_share_its_memory_and_peak(costs, capsys) -> None:
    """cpu-2core is one machine: its processes divide its 24 GiB and its FLOP/s (2 DDP
    processes of one thread each take as long per step as one of two threads), and what
    FSDP "offloads" to the host stays in the same RAM. 8 processes on it "fitted" 24 GiB
    each, at the whole machine's peak each."""
    import json

    from matscale.cli import main
    from matscale.parallel.planner import fits

    cpu = HARDWARE["cpu-2core"]
    cfg = load(None, ["model.width=48", "model.depth=2", "parallel.backend=ddp"])
    one = plan(cfg, cpu, 1, costs, edges_per_atom=30, utilisation=0.1)
    two = plan(cfg, cpu, 2, costs, edges_per_atom=30, utilisation=0.1)
    assert two.seconds["compute"] == pytest.approx(2 * one.seconds["compute"])
    gpu = HARDWARE["a100-80gb"]  # a device per process: more devices, the same step
    g1, g2 = (plan(cfg, gpu, w, costs, edges_per_atom=30, utilisation=0.1) for w in (1, 2))
    assert g2.seconds["compute"] == pytest.approx(g1.seconds["compute"])
    # ~7 GiB per process fits one process's 24 GiB, not a quarter of them
    big = replace(two, devices=4, memory={"activations": 7.0 * GiB})
    assert fits(replace(big, devices=1), cpu) and not fits(big, cpu)
    offloaded = replace(two, memory={"weights": 2.0 * GiB}, host={"optimizer": 11.0 * GiB})
    assert not fits(offloaded, cpu) and fits(offloaded, gpu)  # 13 GiB against 12 each
    args = ["plan", "model.width=64", "data.store=nowhere", "parallel.backend=ddp"]
    assert main([*args, "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert "of 3 (24 shared by 8)" in out
    assert "more processes than cores, each gets a fraction of a core" in out
    assert main([*args, "--devices", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["fits"] is True and answer["devices"] == 2


@pytest.mark.parametrize(
    ("processes", "overrides"),
    [
        (1, ["model.width=192", "model.depth=2", "data.max_atoms=256"]),
        (2, ["model.width=256", "model.depth=2", "data.max_atoms=192", "parallel.backend=fsdp"]),
    ],
)
def test_planned_memory_of_measured_runs_within_15_percent(
    tiny_store, tmp_path, processes: int, overrides: list[str]
) -> None:
    from matscale.parallel.commands import _with_heads
    from matscale.parallel.planner import edges_per_atom_of

    common = ["model.cutoff=4.0", *overrides]
    peak = load_benchmark("planner_check").measure_run(
        "run", processes, common, str(tiny_store), tmp_path
    )
    cfg = load(None, [f"data.store={tiny_store}", "train.ema_decay=0.99", *common])
    costs = model_costs(_with_heads(cfg))
    planned = plan(cfg, HARDWARE["cpu-2core"], processes, costs,
                   edges_per_atom=edges_per_atom_of(str(tiny_store)), utilisation=0.1)  # fmt: skip
    assert planned.total_bytes / 2**20 == pytest.approx(peak, rel=0.15)


def test_the_plan_verb_writes_json_of_a_run_on_a_store(tiny_store: Path, capsys) -> None:
    """`plan --json` crashed (numpy's bool is not JSON) whenever the store was found."""
    import json

    from matscale.cli import main

    assert main(["plan", "model.width=32", f"data.store={tiny_store}", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["fits"] is True and got["parameters"] > 0
    assert not any("assumed" in a for a in got["assumptions"])  # the store's edges per atom
