"""Sweep planning, resumable running, SLURM scripts, and a two-by-two sweep end to end."""

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from matscale.cli import main
from matscale.config import ConfigError, RunConfig, with_overrides
from matscale.data.store import Store
from matscale.scaling.report import write_report
from matscale.scaling.results import RESULTS, read_rows
from matscale.scaling.runner import run_sweep, slurm_script
from matscale.scaling.sweep import _changed, config_hash, load_sweep, plan
from matscale.signals import EXIT_INTERRUPTED
from matscale.train import loop
from matscale.train.checkpoint import list_checkpoints
from matscale.train.data import make_splits, sampler_for

BASE = {
    "data": {"max_atoms": 96},
    "model": {"depth": 2, "cutoff": 4.0},
    "train": {"lr": 5e-3, "warmup_steps": 2, "log_every": 1},
}


def _write(tmp_path: Path, store: Path, **fields) -> Path:
    base = {**BASE, "data": {**BASE["data"], "store": str(store)}}
    data = {"name": "micro", "out_dir": str(tmp_path / "sweeps"), "base": base, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_hash_sees_only_changed_keys() -> None:
    """A key at its default does not enter the hash, so a key added to the config later
    (at a default that changes nothing) leaves every finished run of a sweep finished."""
    base = RunConfig()
    assert config_hash(with_overrides(base, ["train.lr=1e-3"])) != config_hash(base)
    same = with_overrides(base, [f"train.lr={base.train.lr}", "name=other", "out_dir=x"])
    assert config_hash(same) == config_hash(base)
    # a config that grew a key (d) and a section (e), both at their defaults:
    old, old_defaults = {"a": 1, "b": {"c": 2}}, {"a": 0, "b": {"c": 0}}
    grown = {"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 4}}
    grown_defaults = {"a": 0, "b": {"c": 0, "d": 3}, "e": {"f": 4}}
    assert _changed(grown, grown_defaults) == _changed(old, old_defaults) == {"a": 1, "b": {"c": 2}}


def test_plan_resolves_sizes_budgets_and_hashes(tiny_store: Path, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        tiny_store,
        sizes=[{"params": 3000}, {"width": 12, "depth": 3, "set": ["data.max_atoms=64"]}],
        fractions=[1.0, 0.5],
        seeds=[0, 1],
        epochs=2,
    )
    sweep = load_sweep(path)
    runs = plan(sweep)
    assert len(runs) == 8 and [r.index for r in runs] == list(range(8))
    assert len({r.config.name for r in runs}) == 8 and len({r.config_hash for r in runs}) == 8
    assert [r.config_hash for r in plan(sweep)] == [r.config_hash for r in runs]  # stable
    first = runs[0]
    assert abs(first.non_embedding_parameters - 3000) / 3000 < 0.15  # target solved for
    assert first.model.heads == ("emt", "mol")  # resolved against the store
    assert runs[-1].model.width == 12 and runs[-1].model.depth == 3
    assert runs[-1].config.data.max_atoms == 64 and first.config.data.max_atoms == 96
    half, full = runs[0], runs[2]  # fractions sorted: 0.5 before 1.0
    assert half.fraction == 0.5 and full.fraction == 1.0
    assert half.train_structures == pytest.approx(full.train_structures / 2, abs=1)
    store = Store(tiny_store)
    train = make_splits(store, full.config.data).train
    per_epoch = len(
        sampler_for(store, train, full.config.data, train=True, seed=0, rank=0, world=1)
    )
    assert full.config.train.steps == math.ceil(2 * per_epoch)
    assert full.train_atoms == int(store.n_atoms[train].sum())
    assert full.config.train.eval_every == math.ceil(full.config.train.steps / 5)
    assert {r.seed for r in runs} == {0, 1} and runs[1].config.train.seed == 1


def test_min_steps_is_a_floor_of_the_epoch_budget(tiny_store: Path, tmp_path: Path) -> None:
    """Small fractions train at least ``min_steps``; a fraction whose epochs come to more
    keeps its epoch budget."""
    path = _write(tmp_path, tiny_store, sizes=[{"width": 8}], fractions=[0.25, 1.0], epochs=2)
    quarter, full = (r.config.train.steps for r in plan(load_sweep(path)))
    assert quarter < full
    floored = plan(load_sweep(path, [f"min_steps={full}"]))
    assert [r.config.train.steps for r in floored] == [full, full]
    assert floored[0].config.train.eval_every == math.ceil(full / 5)
    assert floored[0].config_hash != plan(load_sweep(path))[0].config_hash


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"sizes": [{"width": 8}], "epochs": 1, "steps": 5}, "exactly one budget"),
        ({"sizes": [{"width": 8}]}, "exactly one budget"),
        ({"sizes": [{"width": 8, "params": 100}], "steps": 5}, "sizes\\[0\\]"),
        ({"sizes": [], "steps": 5}, "sizes is empty"),
        ({"sizes": [{"width": 8}], "steps": 5, "fractions": [0.0]}, "fractions"),
        ({"sizes": [{"widht": 8}], "steps": 5}, "unknown keys \\['widht'\\]"),
        ({"sizes": [{"width": 8, "set": ["train.lrr=1"]}], "steps": 5}, "sizes\\[0\\].set"),
        ({"sizes": [{"width": 8}], "steps": 5, "min_steps": 10}, "min_steps"),
        ({"sizes": [{"width": 8}], "epochs": 1, "min_steps": -1}, "min_steps"),
        # a top-level key was "sweep.yaml: : unknown keys"
        ({"sizes": [{"width": 8}], "steps": 5, "bogus": 1}, r"\.yaml: unknown keys \['bogus'\]"),
        # each of these planned something else than asked: a width-1 model for a negative
        # target, the base's depth for 0, no run at all; processes=0 said "rank 0 not in 0..-1"
        ({"sizes": [{"params": -5}], "steps": 5}, r"sizes\[0\]: params must be a positive"),
        ({"sizes": [{"params": 0}], "steps": 5}, r"sizes\[0\]: params must be a positive"),
        ({"sizes": [{"width": 8, "depth": 0}], "steps": 5}, r"sizes\[0\]: depth must be at"),
        ({"sizes": [{"width": 0}], "steps": 5}, r"sizes\[0\]: width must be at least 1"),
        ({"sizes": [{"width": 8}], "steps": 5, "fractions": []}, "fractions is empty"),
        ({"sizes": [{"width": 8}], "steps": 5, "seeds": []}, "seeds is empty"),
        ({"sizes": [{"width": 8}], "steps": 5, "processes": 0}, "processes must be at least 1"),
    ],
)
def test_bad_sweeps_are_named(tiny_store: Path, tmp_path: Path, fields, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sweep(_write(tmp_path, tiny_store, **fields))


def test_every_problem_of_a_sweep_is_named_at_once(tiny_store: Path, tmp_path: Path) -> None:
    # only the first was reported: one run of the command per mistake
    path = _write(tmp_path, tiny_store, sizes=[{"width": 8, "params": 100}], steps=0,
                  fractions=[0.0], evaluations=0)  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_sweep(path)
    said = str(caught.value)
    problems = ("the budget must be positive", "sizes[0]: set exactly one of params",
                "fractions: 0.0 must lie in (0, 1]", "evaluations must be at least 1")  # fmt: skip
    for problem in problems:
        assert problem in said, said


def test_a_base_problem_is_named_once_as_the_base(tiny_store: Path, tmp_path: Path) -> None:
    # it was blamed on every size's `set`, once per size
    path = _write(tmp_path, tiny_store, sizes=[{"width": 8}, {"width": 16}], steps=5)
    with pytest.raises(ConfigError) as caught:
        load_sweep(path, ["base.train.lr=-1"])
    said = str(caught.value)
    assert said.count("train.lr=-1.0 is not allowed") == 1 and "base: train.lr" in said, said
    assert "sizes[" not in said


def test_sizes_of_one_width_and_depth_get_their_own_runs(tiny_store: Path, tmp_path: Path) -> None:
    """Two sizes of one width and depth that differ in `set` shared one run folder: the second
    refused to resume the first's, and deleting it as told lost the first run."""
    path = _write(tmp_path, tiny_store, steps=5, sizes=[
        {"width": 8, "depth": 2}, {"width": 8, "depth": 2, "set": ["train.lr=0.001"]}])  # fmt: skip
    runs = plan(load_sweep(path))
    names = [r.config.name for r in runs]
    assert len(set(names)) == 2 and all(n.startswith("w8-d2-f1-s0-") for n in names)
    assert [n.rsplit("-", 1)[1] for n in names] == [r.config_hash[:6] for r in runs]
    # the very same run twice is refused
    twice = _write(tmp_path, tiny_store, steps=5, sizes=[{"width": 8}, {"width": 8}])
    with pytest.raises(ConfigError, match=r"runs \[0, 1\] are the same run"):
        plan(load_sweep(twice))


def test_a_sweep_runs_on_the_processes_it_planned_for(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its epoch budgets count steps per process: on 2 processes a sweep planned for 1 trained
    2 epochs where it said 1, with no word."""
    path = _write(tmp_path, tiny_store, sizes=[{"width": 8}], epochs=1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"processes=1 .* this command runs on 2: set"):
        run_sweep(load_sweep(path))
    assert not (tmp_path / "sweeps").exists()


def test_slurm_script_has_one_task_per_run(tiny_store: Path, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        tiny_store,
        sizes=[{"width": 8}, {"width": 16}],
        fractions=[0.5, 1.0],
        steps=10,
        processes=8,
        slurm={"nodes": 2, "gpus_per_node": 4, "partition": "gpu", "concurrent": 2},
    )
    text = slurm_script(load_sweep(path, ["seeds=[0,1,2]"]), path, ["seeds=[0,1,2]"])
    assert "#SBATCH --array=0-11%2" in text and "#SBATCH --nodes=2" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --ntasks-per-node=4" in text
    assert f"-m matscale sweep run {path} 'seeds=[0,1,2]' --index \"$SLURM_ARRAY_TASK_ID\"" in text
    # SIGUSR1 before the limit; the exit code of a checkpointed stop requeues the task
    assert "#SBATCH --signal=USR1@300" in text and "--requeue" in text
    assert f"if [ $code -eq {EXIT_INTERRUPTED} ]" in text and "scontrol requeue" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    with pytest.raises(ConfigError, match="processes"):
        slurm_script(load_sweep(path, ["processes=1"]), path)


def test_two_by_two_sweep_runs_resumes_and_reports(
    tiny_store: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A crashed run resumes from its checkpoint; finished runs are skipped; the report is
    written (too few runs for a joint fit, and it says so)."""
    path = _write(
        tmp_path, tiny_store, sizes=[{"width": 8}, {"width": 16}], fractions=[0.5, 1.0], steps=6
    )
    sweep = load_sweep(path)
    victim = plan(sweep)[1].config
    real_checkpoint = loop.checkpoint
    crashed: list[int] = []

    def crash_once(run) -> None:  # the second run dies right after its first checkpoint
        real_checkpoint(run)
        if run.cfg.name == victim.name and not crashed:
            crashed.append(run.step)
            raise RuntimeError("node lost")

    monkeypatch.setattr(loop, "checkpoint", crash_once)
    outcome = run_sweep(sweep)
    assert len(outcome["done"]) == 3 and outcome["failed"] == [victim.name]
    assert crashed == [2] and [p.name for p in list_checkpoints(victim.run_dir)] == [
        "step-00000002.pt"
    ]
    assert len(read_rows(sweep.sweep_dir / RESULTS)) == 3
    assert main(["sweep", "plan", str(path)]) == 0  # the time left, at the finished runs' rates
    assert re.search(r"1 run to train, \S+ matmul FLOPs: about \S+ h .* GFLOP/s",
                     capsys.readouterr().out)  # fmt: skip

    outcome = run_sweep(sweep)  # only the crashed run trains again, from its checkpoint
    assert outcome["done"] == [victim.name] and len(outcome["skipped"]) == 3
    rows = read_rows(sweep.sweep_dir / RESULTS)
    assert len(rows) == 4 and len({r["config_hash"] for r in rows}) == 4
    planned = {run.config_hash: run.training_flops for run in plan(sweep)}
    for row in rows:  # the plan's estimate against the FLOPs each run trained for
        assert 0.7 < planned[row["config_hash"]] / row["training_flops"] < 1.3
    log = read_rows(victim.run_dir / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert run_sweep(sweep)["done"] == []  # all done: nothing trains
    # rows written before a config key existed (and with another hash) still mark their
    # runs finished: the hash is recomputed from each row's saved config
    results = sweep.sweep_dir / RESULTS
    stale = [{**r, "config_hash": "stale"} for r in read_rows(results)]
    for r in stale:
        del r["config"]["train"]["freeze"]
    results.write_text("".join(json.dumps(r) + "\n" for r in stale))
    assert run_sweep(sweep)["done"] == [] and len(read_rows(results)) == 4

    r = rows[0]
    assert r["steps"] == 6 and r["atoms_seen"] > 0 and r["edges_seen"] > r["atoms_seen"]
    assert r["training_flops"] > 0 and r["train_seconds"] > 0
    assert r["final"]["test/forces_mae_meV_per_A"] > 0
    assert r["best"]["forces_mae_meV_per_A"] <= r["final"]["forces_mae_meV_per_A"] + 1e-9
    assert r["config"]["model"]["width"] == r["width"]
    assert {(x["width"], x["fraction"]) for x in rows} == {(8, 0.5), (8, 1.0), (16, 0.5), (16, 1.0)}

    report = write_report(sweep.sweep_dir, tmp_path / "report", bootstrap=10)
    text = report.read_text()
    assert "| run | N (non-emb.)" in text and "No joint fit" in text  # 4 runs: too few
    assert (tmp_path / "report" / "test_forces_meV_per_A_vs_N.png").exists()
    assert (tmp_path / "report" / "results.csv").read_text().count("\n") == 5

    # editing the sweep so that a planned run's directory holds another config is refused
    edited = load_sweep(path, ["base.train.lr=1e-3"])
    (edited.sweep_dir / RESULTS).unlink()
    with pytest.raises(ConfigError, match="different config"):
        run_sweep(edited)

    assert main(["sweep", "plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 0 done" in out and "follows from the rate of the first to finish" in out
    assert main(["sweep", "plan", str(path), "epochs=2"]) == 2  # two budgets
    assert "exactly one budget" in capsys.readouterr().err


def test_shipped_presets_are_valid_sweeps() -> None:
    """Every preset in configs/sweeps/ parses and passes the checks (planning needs its store)."""
    presets = sorted(Path(__file__).resolve().parents[2].glob("configs/sweeps/*.yaml"))
    assert {p.stem for p in presets} >= {"cpu", "cpu-data", "gpu-h100", "paper"}
    for p in presets:
        sweep = load_sweep(p)
        if p.stem == "cpu-data":  # the data axis: two decades of data, a floor of steps
            assert len(sweep.sizes) >= 2 and max(sweep.fractions) / min(sweep.fractions) >= 100
            assert sweep.min_steps > 0 and sweep.epochs
            continue
        assert len(sweep.sizes) >= 5 and len(sweep.fractions) >= 4 and sweep.epochs == 10
    paper = load_sweep(presets[[p.stem for p in presets].index("paper")])
    assert paper.processes == paper.slurm.nodes * paper.slurm.gpus_per_node
