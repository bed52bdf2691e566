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
from matscale.errors import ConfigError, TrainingError
from matscale.signals import EXIT_INTERRUPTED
from matscale.train import step as step_module
from matscale.train.checkpoint import list_checkpoints, load_checkpoint
from matscale.train.loop import train
from tests.conftest import small_files
from tests.train.test_loop import BASE as LOOP_BASE

# the loop tests' small model; one thread, as two processes may share the two cores
BASE = [*LOOP_BASE, "parallel.threads=1"]


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


def test_mse_on_a_huge_force_packed_without_a_limit_writes_nothing_non_finite(
    tmp_path: Path,
) -> None:
    # the second case: the MSE loss and one huge force packed with --max-force 0 made
    # NaN weights that were written silently
    import ase.io

    from matscale.data.pack import PackConfig, pack
    from tests.conftest import emt_structures

    structures = emt_structures(16, seed=3)
    structures[5].forces = structures[5].forces * 1e30  # squared: beyond float32's range
    path = tmp_path / "huge.extxyz"
    ase.io.write(path, [s.to_atoms() for s in structures])
    pack([path], tmp_path / "store", PackConfig(workers=1, cutoff=4.0, max_force=None),
         progress=False)  # fmt: skip
    cfg = _cfg(
        tmp_path / "store", tmp_path, "name=huge", "train.loss=mse", "data.split=[1.0,0.0,0.0]",
        "train.steps=12", "data.max_atoms=48",
    )  # fmt: skip
    # its force RMS (1e29 eV/Å) would set the model's scales and overflow every step: refused
    # before any model is built, naming the store, the source and the fix
    found = r"store.*force RMS of source 'emt' is 1.*e\+29.*--max-force"
    with pytest.raises(ConfigError, match=found):
        train(cfg, progress=False)
    assert not (cfg.run_dir / "checkpoints").exists() and not (cfg.run_dir / "model.pt").exists()


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
import errno, faulthandler, os, sys
faulthandler.dump_traceback_later(120, exit=False)  # a hang shows its stacks in the report
rank, fail, port = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
import matscale.train.loop as loop
import matscale.train.state as state
if fail == "save" and rank == 0:  # rank 0's disk fills as it writes the first checkpoint
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/step-00000005.pt")
    state.save_checkpoint = full
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
    from matscale.parallel.launch import free_port

    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCH)
    args = [
        "train", "--no-progress", f"data.store={tiny_store}", f"out_dir={tmp_path}", *BASE,
        "train.steps=1000", "train.checkpoint_every=5", "parallel.backend=ddp",
        "parallel.timeout_s=120",
    ]  # fmt: skip
    port = str(free_port())
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
    try:
        errs[failing] = procs[failing].communicate(timeout=300)[1]
        failed_at = time.monotonic()
        errs[1 - failing] = procs[1 - failing].communicate(timeout=300)[1]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError([p.communicate()[1] for p in procs]) from None
    # the other rank learns of it at once, not after parallel.timeout_s
    assert time.monotonic() - failed_at < 30, errs
    assert all(p.returncode not in (0, EXIT_INTERRUPTED) for p in procs), errs
    original = "No space left on device" if fail == "save" else "injected failure on rank 1"
    assert original in errs[failing]
    assert "another process of the run failed" in errs[1 - failing]
    assert "Traceback" not in errs[1 - failing]


def test_a_resume_with_other_splits_or_other_data_is_refused(
    tiny_store: Path, tmp_path: Path
) -> None:
    # another data.split (new validation and test overlapping old training data) or another
    # store (heads matched to other sources by position) was accepted silently
    import shutil

    import ase.io

    from matscale.config import ConfigError
    from matscale.data.pack import PackConfig, pack
    from tests.conftest import emt_structures, molecules

    train(_cfg(tiny_store, tmp_path, "name=r", "train.steps=3"), progress=False)
    for change, named in [
        ("data.split=[0.8,0.1,0.1]", r"data\.split differ"),
        ("data.split_seed=1", r"data\.split_seed differ"),
        ("data.holdout_families=[strained]", r"data\.holdout_families differ"),
    ]:
        with pytest.raises(ConfigError, match=named):
            train(_cfg(tiny_store, tmp_path, "name=r", "train.steps=5", change), progress=False)
    other = tmp_path / "other"
    other.mkdir()
    ase.io.write(
        other / "in.extxyz",
        [s.to_atoms() for s in emt_structures(40, seed=9) + molecules(24, seed=9)],
    )
    pack([other / "in.extxyz"], other / "store", PackConfig(workers=1, cutoff=4.0), progress=False)
    with pytest.raises(ConfigError, match=r"the content of data\.store"):
        train(_cfg(other / "store", tmp_path, "name=r", "train.steps=5"), progress=False)
    # the same store copied elsewhere is the same data: the run resumes
    shutil.copytree(tiny_store, tmp_path / "copy")
    train(_cfg(tmp_path / "copy", tmp_path, "name=r", "train.steps=5"), progress=False)
    assert load_checkpoint(list_checkpoints(tmp_path / "r")[-1])["step"] == 5


def test_a_closed_output_pipe_does_not_stop_training(tiny_store: Path, tmp_path: Path) -> None:
    # `matscale train ... | head -2` died at step 100 with a BrokenPipeError, no checkpoint
    args = [f"data.store={tiny_store}", f"out_dir={tmp_path}", "name=pipe", *BASE]
    args += ["train.steps=25", "train.eval_every=2"]  # many lines after the reader leaves
    proc = subprocess.run(
        f"{sys.executable} -m matscale train {' '.join(args)} | head -c 1; exit ${{PIPESTATUS[0]}}",
        shell=True,
        capture_output=True,
        text=True,
        executable="/bin/bash",
    )
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipe" not in proc.stderr
    assert (tmp_path / "pipe" / "model.pt").exists()
    assert load_checkpoint(list_checkpoints(tmp_path / "pipe")[-1])["step"] == 25


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_loses_nothing(
    tiny_store: Path, tmp_path: Path
) -> None:
    # a full disk said `RuntimeError: [enforce fail at inline_container.cc:672] unexpected
    # pos ...` (nothing about space) and left a .tmp
    args = [f"data.store={tiny_store}", f"out_dir={tmp_path}", "name=full", *BASE]
    cmd = [sys.executable, "-m", "matscale", "train", "--no-progress", *args]
    first = subprocess.run(
        [*cmd, "train.steps=6", "train.checkpoint_every=3"], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    proc = subprocess.run(
        [*cmd, "train.steps=12", "train.checkpoint_every=3"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if "error" in x]
    assert "step-00000009.pt: could not be written (" in line and "MiB free" in line
    assert "Traceback" not in proc.stderr
    folder = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-00000003.pt", "step-00000003.pt.sha256", "step-00000006.pt", "step-00000006.pt.sha256"
    ]  # fmt: skip
    # with room again, the same command resumes from the last good checkpoint
    again = subprocess.run([*cmd, "train.steps=12"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming at step 6" in again.stdout


def test_a_damaged_or_truncated_checkpoint_is_refused_by_name_and_the_earlier_one_resumes(
    tiny_store: Path, tmp_path: Path
) -> None:
    # flipped bytes in a checkpoint's tensors resumed silently (validation errors of
    # 850 eV/atom) and overwrote model.pt; a truncated one gave "error: : Invalid argument",
    # an emptied one a traceback (EOFError)
    import hashlib
    import shutil

    from matscale.errors import DataError
    from matscale.train.checkpoint import digest_path

    run = tmp_path / "d"
    train(_cfg(tiny_store, tmp_path, "name=d", "train.steps=6", "train.checkpoint_every=3"),
          progress=False)  # fmt: skip
    first, last = list_checkpoints(run)
    recorded = digest_path(last).read_text().strip()
    assert recorded == hashlib.sha256(last.read_bytes()).hexdigest()
    model_before = (run / "model.pt").read_bytes()
    good = last.read_bytes()
    damaged = bytearray(good)
    for k in range(len(good) // 2, len(good) // 2 + 64):  # inside the tensors' bytes
        damaged[k] ^= 0xFF
    last.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"step-00000006\.pt: damaged: .*SHA-256.*step-00000003"):
        train(_cfg(tiny_store, tmp_path, "name=d", "train.steps=9"), progress=False)
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(last)  # what `matscale export` reads
    assert (run / "model.pt").read_bytes() == model_before  # nothing written from it
    assert last.read_bytes() == bytes(damaged)  # and nothing deleted
    # cut short, or emptied, without its digest (a checkpoint from before digests)
    unreadable = r"step-00000006\.pt: cannot be read as a checkpoint .*truncated or damaged"
    for size in (5000, 0):
        last.write_bytes(good[:size])
        digest_path(last).unlink(missing_ok=True)
        with pytest.raises(DataError, match=unreadable + r".*previous checkpoint, step-00000003"):
            load_checkpoint(last)
    # moved aside as the message says, the run resumes from the earlier checkpoint
    shutil.move(last, tmp_path / "bad.pt")
    train(_cfg(tiny_store, tmp_path, "name=d", "train.steps=9"), progress=False)
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 9
    assert first.exists()


def test_a_finished_run_run_again_with_other_settings_keeps_its_records(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `train ... train.lr=1e-4` on a finished run trained nothing but rewrote config.yaml,
    # model.pt's settings and its card to say lr 1e-4
    train(_cfg(tiny_store, tmp_path, "name=f", "train.steps=4"), progress=False)
    run = tmp_path / "f"
    config = (run / "config.yaml").read_text()
    weights = read_model_file(run / "model.pt")["state_dict"]
    capsys.readouterr()
    train(_cfg(tiny_store, tmp_path, "name=f", "train.steps=4", "train.lr=1e-4"), progress=False)
    said = capsys.readouterr().out
    assert "already finished at step 4: nothing is trained" in said
    assert "train.lr: 0.005 → 0.0001" in said
    assert (run / "config.yaml").read_text() == config
    blob = read_model_file(run / "model.pt")
    assert blob["run_config"]["train"]["lr"] == 5e-3
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in weights.items())
    assert "lr 0.005," in (run / "model.md").read_text()
    # a run that goes on says what changed, and records the new settings
    train(_cfg(tiny_store, tmp_path, "name=f", "train.steps=6", "train.lr=1e-4"), progress=False)
    assert "resuming with changed settings: train.lr: 0.005 → 0.0001; train.steps: 4 → 6" in (
        capsys.readouterr().out
    )
    assert "lr: 0.0001" in (run / "config.yaml").read_text()


def test_a_second_process_on_the_same_run_is_refused_and_a_killed_one_leaves_no_lock(
    tiny_store: Path, tmp_path: Path
) -> None:
    # two `train` runs with the same name both ran and interleaved metrics.jsonl
    from matscale.config import ConfigError

    proc = _start_training(
        tiny_store, tmp_path, "twice", "train.steps=100000", "train.checkpoint_every=2"
    )
    _wait_for_steps(tmp_path / "twice", proc)
    with pytest.raises(ConfigError, match=rf"being trained by another process \(pid {proc.pid} "):
        train(_cfg(tiny_store, tmp_path, "name=twice", "train.steps=5"), progress=False)
    proc.kill()  # SIGKILL: no handler runs, the lock must go with the process
    proc.communicate()
    resumed_from = load_checkpoint(list_checkpoints(tmp_path / "twice")[-1])["step"]
    train(_cfg(tiny_store, tmp_path, "name=twice", f"train.steps={resumed_from + 1}"))
    assert load_checkpoint(list_checkpoints(tmp_path / "twice")[-1])["step"] == resumed_from + 1


def test_kill_9_mid_run_then_the_same_command_gives_the_uninterrupted_weights(
    tiny_store: Path, tmp_path: Path
) -> None:
    steps = ["train.steps=14", "train.checkpoint_every=3", "train.log_every=1"]
    proc = _start_training(tiny_store, tmp_path, "killed", *steps)
    deadline = time.monotonic() + 120
    while not list_checkpoints(tmp_path / "killed") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL, wherever it is: mid-step, mid-write
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    again = _start_training(tiny_store, tmp_path, "killed", *steps)
    assert again.wait(timeout=300) == 0
    whole = _start_training(tiny_store, tmp_path, "whole", *steps)
    assert whole.wait(timeout=300) == 0
    a = read_model_file(tmp_path / "killed" / "model.pt")["state_dict"]
    b = read_model_file(tmp_path / "whole" / "model.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
