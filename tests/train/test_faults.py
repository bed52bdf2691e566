"""Faults a long run meets: non-finite losses and weights, signals, a closed output pipe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from matscale.calc.model_file import read_model_file
from matscale.config import load
from matscale.errors import TrainingError
from matscale.signals import EXIT_INTERRUPTED
from matscale.train import step as step_module
from matscale.train.checkpoint import list_checkpoints, load_checkpoint
from matscale.train.loop import train

BASE = [
    "model.width=16",
    "model.depth=2",
    "model.cutoff=4.0",
    "data.max_atoms=96",
    "train.warmup_steps=2",
    "train.eval_every=10",
    "parallel.threads=1",
]


def _cfg(store: Path, out: Path, *extra: str):
    return load(None, [f"data.store={store}", f"out_dir={out}", *BASE, *extra])


def _all_finite(state: object) -> bool:
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(_all_finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(_all_finite(v) for v in state)
    return True


def test_a_diverging_run_stops_naming_the_steps_and_writes_nothing_non_finite(
    tiny_store: Path, tmp_path: Path
) -> None:
    # lr=1e6 made the loss NaN from step 2; the run went on and wrote NaN weights, exit 0
    cfg = _cfg(
        tiny_store, tmp_path, "name=nan", "train.lr=1e6", "train.grad_clip=null",
        "train.steps=40", "train.checkpoint_every=1", "train.max_bad_steps=3",
    )  # fmt: skip
    with pytest.raises(TrainingError, match=r"steps \d+-\d+ .* non-finite .* indices \d"):
        train(cfg, progress=False)
    for path in list_checkpoints(cfg.run_dir):
        ck = load_checkpoint(path)
        assert _all_finite(ck["model"]) and _all_finite(ck["ema"]) and _all_finite(ck["optimizer"])
    assert not (cfg.run_dir / "model.pt").exists()


def test_a_non_finite_loss_skips_its_step_and_the_run_goes_on(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step_module.loss_fn
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):  # the 3rd and 4th steps' losses are NaN
        value, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (value * float("nan") if calls["n"] in (3, 4) else value), parts

    monkeypatch.setattr(step_module, "loss_fn", sometimes_nan)
    cfg = _cfg(tiny_store, tmp_path, "name=skip", "train.steps=12", "train.log_every=1")
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in rows if r["kind"] == "train" and "skipped" in r]
    assert skipped == [3, 4]
    model = read_model_file(cfg.run_dir / "model.pt")
    assert _all_finite(model["state_dict"])
    assert load_checkpoint(list_checkpoints(cfg.run_dir)[-1])["skipped_steps"] == 2


def test_a_non_finite_gradient_from_a_finite_loss_is_skipped(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def nan_norm_once(params, max_norm, *args, **kwargs):
        norm = real(params, max_norm, *args, **kwargs)
        calls["n"] += 1
        return norm * float("inf") if calls["n"] == 2 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", nan_norm_once)
    cfg = _cfg(tiny_store, tmp_path, "name=grad", "train.steps=5", "train.log_every=1")
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped") == "gradient"] == [2]


def _start_training(store: Path, out: Path, name: str, *extra: str) -> subprocess.Popen:
    args = [f"data.store={store}", f"out_dir={out}", f"name={name}", *BASE, *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "matscale", "train", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_steps(run_dir: Path, proc: subprocess.Popen, n: int = 3) -> None:
    deadline = time.monotonic() + 120
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and sum('"train"' in x for x in path.read_text().splitlines()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"the run made no {n} steps: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_stop_signal_finishes_the_step_writes_a_checkpoint_and_resumes(
    tiny_store: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    # SIGTERM / SIGUSR1 killed a run at once without a checkpoint (exit 143 / 138); SIGINT
    # printed a KeyboardInterrupt traceback
    steps = ["train.steps=100000", "train.checkpoint_every=100000"]
    proc = _start_training(tiny_store, tmp_path, "sig", *steps)
    _wait_for_steps(tmp_path / "sig", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    (checkpoint,) = list_checkpoints(tmp_path / "sig")
    stopped_at = load_checkpoint(checkpoint)["step"]
    assert stopped_at >= 3
    # the same command resumes from there (here with a reachable end)
    proc = _start_training(tiny_store, tmp_path, "sig", f"train.steps={stopped_at + 2}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"resuming at step {stopped_at}" in out


def test_a_second_signal_exits_at_once() -> None:
    # two signals sent together may arrive as one: the second is sent once the first is seen
    code = (
        "import os, signal, time\n"
        "from matscale.signals import StopRequest\n"
        "with StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    while not stop.requested: time.sleep(0.01)\n"
        "    print('asked', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "asked\n"
    assert proc.returncode == -signal.SIGTERM


LAUNCH = """
import errno, os, sys
rank, fail, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import matscale.train.loop as loop
if fail == "save" and rank == 0:  # rank 0's disk fills as it writes the first checkpoint
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/step-00000005.pt")
    loop.save_checkpoint = full
if fail == "step" and rank == 1:  # rank 1 fails in its third step
    real, calls = loop.train_step, [0]
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("injected failure on rank 1")
        return real(*args, **kwargs)
    loop.train_step = step
from matscale.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize(("fail", "failing"), [("save", 0), ("step", 1)])
def test_a_failure_on_one_rank_ends_every_rank_with_the_first_error(
    tiny_store: Path, tmp_path: Path, fail: str, failing: int
) -> None:
    # rank 0 failing in its checkpoint write left rank 0 in finish()'s barrier and rank 1 in
    # the next all_reduce: > 200 s, the original error never printed
    from tests.train.test_distributed import _free_port

    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCH)
    args = [
        "train", "--no-progress", f"data.store={tiny_store}", f"out_dir={tmp_path}", *BASE,
        "train.steps=1000", "train.checkpoint_every=5", "parallel.backend=ddp",
        "parallel.timeout_s=120",
    ]  # fmt: skip
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(launcher), str(rank), fail, port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errs = ["", ""]
    errs[failing] = procs[failing].communicate(timeout=300)[1]
    failed_at = time.monotonic()
    errs[1 - failing] = procs[1 - failing].communicate(timeout=300)[1]
    # the other rank learns of it at once, not after parallel.timeout_s
    assert time.monotonic() - failed_at < 30, errs
    assert all(p.returncode not in (0, EXIT_INTERRUPTED) for p in procs), errs
    original = "No space left on device" if fail == "save" else "injected failure on rank 1"
    assert original in errs[failing]
    assert "another process of the run failed" in errs[1 - failing]
    assert "Traceback" not in errs[1 - failing]
