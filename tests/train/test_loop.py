import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from matscale.calc import load_potential
from matscale.config import load
from matscale.train import loop
from matscale.train.checkpoint import list_checkpoints
from matscale.train.loop import train

BASE = [
    "model.width=16",
    "model.depth=2",
    "model.cutoff=4.0",
    "data.max_atoms=96",
    "train.warmup_steps=2",
    "train.eval_every=10",
    "train.log_every=1",
]


def _cfg(store: Path, out: Path, *extra: str):
    return load(None, [f"data.store={store}", f"out_dir={out}", *BASE, *extra])


def _train_losses(run_dir: Path) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def test_trains_evaluates_and_exports(tiny_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        tiny_store,
        tmp_path,
        "name=a",
        "train.steps=60",
        "train.lr=5e-3",
        "data.holdout_families=[strained]",
    )
    final = train(cfg, progress=False)
    losses = _train_losses(cfg.run_dir)
    assert len(losses) == 60
    # it learns: the MAE loss of single 96-atom batches is noisy, so compare ten steps
    assert sum(losses[-10:]) < 0.85 * sum(losses[:10])
    for key in (
        "energy_mae_meV_per_atom",
        "forces_mae_meV_per_A",
        "emt/forces_mae_meV_per_A",
        "mol/energy_mae_meV_per_atom",
        "test/forces_mae_meV_per_A",
        "holdout/emt/forces_mae_meV_per_A",
    ):
        assert key in final and final[key] > 0
    # each held-out family is scored on its own too (one family here: the same numbers)
    assert final["holdout:strained/forces_mae_meV_per_A"] == pytest.approx(
        final["holdout/forces_mae_meV_per_A"]
    )
    potential = load_potential(cfg.run_dir / "model.pt")
    assert potential.model.config.heads == ("emt", "mol") and potential.model.config.width == 16
    assert potential.info["train_structures"]["emt"] > 0 and potential.info["train_seconds"] > 0
    assert (cfg.run_dir / "config.yaml").read_text().startswith("name: a")
    card = (cfg.run_dir / "model.md").read_text()
    holdout = final["holdout/emt/forces_mae_meV_per_A"]
    assert "held-out F MAE (meV/Å)" in card and f"{holdout:.1f}" in card
    assert "kept out of training: strained" in card and "| steps | 60 (planned 60) |" in card


def test_the_closing_table_is_printed_once(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation lines during the run; at the end the table of validation / test errors, and
    not also a line repeating its numbers."""
    cfg = _cfg(tiny_store, tmp_path, "name=b", "train.steps=4", "train.eval_every=2")
    final = train(cfg, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "[val @ step 2]" in text and "[final @" not in text
    assert "mean absolute errors (validation / test):" in text
    assert f"{final['emt/forces_mae_meV_per_A']:.1f}" in text  # the table has the numbers
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows].count("final") == 1  # the record is still written


def test_resume_reproduces_the_uninterrupted_run(
    tiny_store: Path, tmp_path: Path, monkeypatch
) -> None:
    args = ["train.steps=24", "train.checkpoint_every=8", "train.accumulation=2"]
    full = _cfg(tiny_store, tmp_path, "name=full", *args)
    train(full, progress=False)
    part = _cfg(tiny_store, tmp_path, "name=part", *args)

    import matscale.train.loop as loop

    real_step, calls = loop.train_step, []

    def dies_at_step_19(*a, **k):  # the process is killed mid-run, after checkpoint 16
        calls.append(1)
        if len(calls) == 19:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(loop, "train_step", dies_at_step_19)
    with pytest.raises(KeyboardInterrupt):
        train(part, progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    assert list_checkpoints(part.run_dir)[-1].name == "step-00000016.pt"
    assert len(_train_losses(part.run_dir)) == 18  # logged before it died
    train(part, progress=False)  # resumes at 16 and drops the log rows after it
    a, b = _train_losses(full.run_dir), _train_losses(part.run_dir)
    assert len(b) == 24
    assert a == b  # bit-identical on CPU: data order, weights, optimizer and EMA restored
    wa = torch.load(full.run_dir / "model.pt", weights_only=False)["state_dict"]
    wb = torch.load(part.run_dir / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_keeps_only_the_last_checkpoints(tiny_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        tiny_store,
        tmp_path,
        "name=k",
        "train.steps=12",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=2",
    )
    train(cfg, progress=False)
    assert [p.name for p in list_checkpoints(cfg.run_dir)] == [
        "step-00000009.pt",
        "step-00000012.pt",
    ]
    assert not list((cfg.run_dir / "checkpoints").glob("*.tmp"))


@pytest.mark.parametrize(
    "extra",
    [
        ["model.force_head=direct"],
        ["parallel.precision=bf16"],
        ["parallel.activation_checkpointing=true"],
        ["train.schedule=plateau", "train.loss=huber", "train.ema_decay=null"],
    ],
)
def test_options_train(tiny_store: Path, tmp_path: Path, extra: list[str]) -> None:
    cfg = _cfg(tiny_store, tmp_path, "name=o", "train.steps=6", *extra)
    final = train(cfg, progress=False)
    assert final["forces_mae_meV_per_A"] > 0
    shutil.rmtree(cfg.run_dir)


def test_cutoff_beyond_the_store_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_store, tmp_path, "name=c", "train.steps=2", "model.cutoff=6.0")
    with pytest.raises(ValueError, match="exceeds the store's cutoff"):
        train(cfg, progress=False)


def test_a_run_folder_of_another_model_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    """Resuming a folder whose checkpoints hold another architecture names the fields, and
    leaves the folder as it was; other changes (more steps) resume."""
    from matscale.config import ConfigError

    train(_cfg(tiny_store, tmp_path, "name=r", "train.steps=4"), progress=False)
    before = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match=r"model\.residual differ"):
        train(_cfg(tiny_store, tmp_path, "name=r", "train.steps=4", "model.residual=true"))
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == before
    longer = train(_cfg(tiny_store, tmp_path, "name=r", "train.steps=6"), progress=False)
    assert longer["forces_mae_meV_per_A"] > 0


def test_a_time_budget_anneals_the_cosine_and_a_resume_continues_it(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fake clock that gains 0.1 s each time it is read (about once a step): the 3-second
    # budget lasts about 30 steps on any machine, however slow
    ticks = itertools.count()
    monkeypatch.setattr(loop, "budget_clock", lambda: 0.1 * next(ticks))
    # far more steps than 3 seconds allow: under the default schedule (cosine-time) the clock,
    # not the step count, ends the decay
    extra = ("name=timed", "train.steps=100000", "train.max_minutes=0.05", "train.lr=1e-2")
    cfg = _cfg(tiny_store, tmp_path, *extra, "train.eval_every=100000")
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    assert 10 < len(lrs) < 100000 and max(lrs) > 0.9e-2
    assert lrs[-1] < 0.03 * 1e-2  # min_lr_ratio 0.01 of 1e-2, give or take the last step
    warm = 2  # train.warmup_steps in BASE: the decay starts after it
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(lrs[warm:]))
    # a resume of the annealed run stays at the floor: its schedule was spent
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = [r["lr"] for r in rows if r["kind"] == "train"][len(lrs) :]
    assert resumed and max(resumed) < 0.03 * 1e-2


def test_a_run_reports_its_own_peak_memory_not_its_launchers() -> None:
    """`peak_rss_mib` in metrics.jsonl is the process's own high-water mark: ru_maxrss survives
    exec, so a run launched from a large process (a test worker, a notebook) reported the
    launcher's peak as its own and the planner's check failed in CI."""
    import subprocess
    import sys

    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB resident in this, the launching, process
    ballast += 1.0
    code = "from matscale.train.log import peak_resident_mib; print(peak_resident_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout)  # fmt: skip
    assert 0 < child < 400, child
    del ballast


def test_each_step_logs_its_own_time_and_its_wait_for_batches(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`data_s` is the time a step waited for its batches (reading, building graphs), `step_s`
    the step's own; with a loader slowed by 30 ms per batch the wait shows in `data_s`, not in
    `step_s`, and the run's `data_share` follows. Evaluations are neither."""
    import time

    from matscale.data.batch import GraphDataset

    built = GraphDataset.__getitems__

    def slow(self: GraphDataset, indices: list[int]) -> list[dict[str, np.ndarray]]:
        time.sleep(0.03)
        return built(self, indices)

    evaluate = loop.evaluate_split

    def slow_evaluation(*args: object) -> dict[str, float]:
        time.sleep(1.0)
        return evaluate(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(GraphDataset, "__getitems__", slow)
    monkeypatch.setattr(loop, "evaluate_split", slow_evaluation)
    cfg = _cfg(
        tiny_store, tmp_path, "name=t", "train.steps=6", "train.eval_every=3",
        "train.accumulation=2",
    )  # fmt: skip
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    assert len(steps) == 6
    for r in steps:  # two micro-batches per step, each slowed: the step waited for both
        assert r["data_s"] >= 2 * 0.03 and r["step_s"] > 0
    # the evaluation after step 3 (slowed by 1 s) is not the next step's wait
    assert steps[3]["data_s"] < 0.5
    waited = sum(r["data_s"] for r in steps)
    share = waited / (waited + sum(r["step_s"] for r in steps))
    assert steps[-1]["data_share"] == pytest.approx(share)
