"""Two CPU processes (gloo) give the same training as one process on the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from matscale.config import TrainConfig
from matscale.data.batch import collate, graph_sample
from matscale.models.egnn import EGNN, EGNNConfig
from matscale.parallel.distributed import finish, init_distributed, wrap_ddp
from matscale.parallel.launch import free_port, local_command
from matscale.parallel.plan import compile_forward
from matscale.train.step import make_optimizer, train_step
from tests.conftest import emt_structures, molecules
from tests.train.test_loop import _train_losses

STEPS = 3


def _batches():
    a = emt_structures(3, seed=1)
    b = emt_structures(2, seed=2) + molecules(2, seed=3)
    src = {"emt": 0, "mol": 1}
    return [collate([graph_sample(s, 4.0, source=src[s.source]) for s in part]) for part in (a, b)]


def _model(force_head: str) -> EGNN:
    torch.manual_seed(0)
    return EGNN(
        EGNNConfig(width=16, depth=2, cutoff=4.0, heads=("emt", "mol"), force_head=force_head)
    )


def as_rank(rank: int, port: int) -> None:
    """Give this spawned process the environment torchrun gives rank ``rank`` of 2, and one
    thread (two processes share the two cores)."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def leave() -> None:
    """End a spawned worker with exit code 0 once its work is saved: gloo can abort in its
    threads' teardown at interpreter exit after a correct run (DESIGN.md), which the parent
    would report as a failed process."""
    finish()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, port: int, out: str, force_head: str) -> None:
    as_rank(rank, port)
    d = init_distributed("ddp")
    explicit = force_head.startswith("conservative, written out")  # through DDP's forward
    model = _model("conservative" if explicit else force_head)
    wrapped = wrap_ddp(model, d)
    if force_head.endswith("compiled"):  # as parallelize() does it: compiled, then wrapped
        compile_forward(model)
        # gradient buckets far smaller than the model, as a large model's are (the first
        # one too, which dynamo checks): dynamo then splits a DDP-wrapped graph at bucket
        # boundaries, which fails on the written-out forces unless compile_forward stops it
        torch.distributed._DEFAULT_FIRST_BUCKET_BYTES = 1000
        wrapped = DistributedDataParallel(model, bucket_cap_mb=0.002)
    opt = make_optimizer(model, TrainConfig())
    batch = _batches()[rank]
    for _ in range(STEPS):
        train_step(
            wrapped, [batch], opt, TrainConfig(), lr=1e-2, device=d.device, explicit_forces=explicit
        )
    if rank == 0:
        torch.save(model.state_dict(), out)
    leave()


def bf16_autocast(on: bool):
    """The step's precision context: bf16 autocast on the CPU, or float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else None


def _single(force_head: str, bf16: bool = False) -> dict:
    model = _model(force_head)
    opt = make_optimizer(model, TrainConfig())
    batches = _batches()
    for _ in range(STEPS):
        train_step(
            model,
            batches,
            opt,
            TrainConfig(),
            lr=1e-2,
            device=torch.device("cpu"),
            autocast=bf16_autocast(bf16),
        )
    return model.state_dict()


def test_ddp_matches_one_process_with_accumulation(tmp_path: Path) -> None:
    """Also with forces written out on the 2 processes, and compiled, against autograd's on
    one. Both sum in another order than autograd: a compiled graph everywhere, the written-out
    path in its radial products (models/narrow.py). In float64 the weights agree to 1e-14
    after these steps; in float32 the round-off reaches 1e-5 in ``w_radial`` (Adam's first
    steps amplify it where a gradient is near zero)."""
    for force_head in (
        "conservative",
        "direct",
        "conservative, written out",
        "conservative, written out, compiled",
    ):
        tol = {"rtol": 1e-4, "atol": 1e-5} if "written out" in force_head else {}
        out = tmp_path / f"{force_head}.pt"
        mp.start_processes(
            _worker, args=(free_port(), str(out), force_head), nprocs=2, start_method="spawn"
        )
        force_head = force_head.split(",")[0]
        ddp, single = torch.load(out), _single(force_head)
        changed = False
        for k in single:
            torch.testing.assert_close(ddp[k], single[k], **({"rtol": 1e-5, "atol": 1e-6} | tol))
            changed |= not torch.equal(single[k], _model(force_head).state_dict()[k])
        assert changed  # the steps did move the weights


def torchrun_train(store: Path, out: Path, name: str, *overrides: str) -> str:
    """Run ``matscale train`` on 2 processes of 1 thread through torchrun, with a tiny model;
    return its standard output (fail the test with its standard error)."""
    cmd = local_command([
        "-m", "matscale", "train", f"data.store={store}", f"out_dir={out}", f"name={name}",
        "parallel.threads=1", "model.width=16", "model.depth=2", "model.cutoff=4.0",
        "data.max_atoms=64", "train.eval_every=4", "train.checkpoint_every=4", *overrides,
        "--no-progress",
    ], processes=2)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # DDP's reducer warned of a readout weight's strides, whose layout is the bucket's
    assert "Grad strides do not match" not in result.stderr, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("backend", ["ddp", "fsdp", "fsdp bf16", "deepspeed", "deepspeed zero3"])
def test_torchrun_trains_end_to_end(tiny_store: Path, tmp_path: Path, backend: str) -> None:
    extra = []
    if backend == "fsdp bf16":
        backend, extra = "fsdp", ["parallel.precision=bf16", "parallel.edge_chunk=64"]
    if backend.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
        if backend.endswith("zero3"):
            extra = ["parallel.zero_stage=3", "model.force_head=direct", "train.ema_decay=null"]
        backend = "deepspeed"
    stdout = torchrun_train(
        tiny_store, tmp_path, "ddp", f"parallel.backend={backend}", "train.steps=8", *extra
    )
    assert "on each of 2 process(es)" in stdout
    assert (tmp_path / "ddp" / "model.pt").exists()
    assert "mean absolute errors" in stdout
    from matscale.calc import load_potential

    model = load_potential(
        tmp_path / "ddp" / "model.pt"
    ).model  # a plain model, whatever trained it
    assert not any(type(p).__name__ == "DTensor" for p in model.parameters())


def test_deepspeed_run_resumes_from_its_own_checkpoint(tiny_store: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    args = ["parallel.backend=deepspeed", "parallel.zero_stage=2", "train.keep_checkpoints=2"]
    assert "starting" in torchrun_train(tiny_store, tmp_path, "ds", *args, "train.steps=8")
    resumed = torchrun_train(tiny_store, tmp_path, "ds", *args, "train.steps=12")
    assert "resuming at step 8" in resumed
    rows = (tmp_path / "ds" / "metrics.jsonl").read_text().count('"kind": "train"')
    assert rows == 12
    # DeepSpeed's optimizer shards are kept for the same checkpoints as ours
    assert sorted(p.name for p in (tmp_path / "ds" / "deepspeed").glob("step-*")) == [
        "step-00000008",
        "step-00000012",
    ]
    # another backend cannot read them: one line (it was a torch RuntimeError about an empty
    # optimizer state dict), nothing written
    from matscale.config import load
    from matscale.errors import ConfigError
    from matscale.train.loop import train

    before = sorted(p.name for p in (tmp_path / "ds").rglob("*"))
    cfg = load(None, [
        f"data.store={tiny_store}", f"out_dir={tmp_path}", "name=ds", "parallel.threads=1",
        "model.width=16", "model.depth=2", "model.cutoff=4.0", "data.max_atoms=64",
        "train.steps=16", "train.keep_checkpoints=2",
    ])  # fmt: skip
    with pytest.raises(ConfigError, match=r"parallel\.backend=deepspeed, whose optimizer state "
                       r"DeepSpeed keeps in its own files: resume it with parallel\.backend="
                       "deepspeed"):  # fmt: skip
        train(cfg, progress=False)
    assert sorted(p.name for p in (tmp_path / "ds").rglob("*")) == before


def test_fsdp_sharded_checkpoint_resumes_exactly_and_on_one_process(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a constant learning rate after warm-up: the 8-step run is the 12-step run cut short
    args = ["parallel.backend=fsdp", "train.keep_checkpoints=2", "train.schedule=constant"]
    torchrun_train(tiny_store, tmp_path, "whole", *args, "train.steps=12")
    torchrun_train(tiny_store, tmp_path, "parts", *args, "train.steps=8")
    shards = tmp_path / "parts" / "checkpoints" / "step-00000008.dcp"
    # each process wrote its own shard; the .pt beside it holds no weights
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = torch.load(shards.with_suffix(".pt"), weights_only=False)
    assert meta["model"] is None and meta["sharded"] == shards.name
    # a second copy of the 8-step run, resumed later on a single process without FSDP
    shutil.copytree(tmp_path / "parts", tmp_path / "single")
    assert "resuming at step 8" in torchrun_train(
        tiny_store, tmp_path, "parts", *args, "train.steps=12"
    )
    assert _train_losses(tmp_path / "parts") == _train_losses(tmp_path / "whole")  # bit-identical
    assert sorted(p.name for p in (tmp_path / "parts" / "checkpoints").iterdir()) == [
        "step-00000008.dcp", "step-00000008.pt", "step-00000008.pt.sha256",
        "step-00000012.dcp", "step-00000012.pt", "step-00000012.pt.sha256",
    ]  # fmt: skip

    from matscale.config import load, with_overrides
    from matscale.parallel.distributed import Dist
    from matscale.train.run import build_run
    from matscale.train.state import resume

    cfg = load(None, [
        f"data.store={tiny_store}", f"out_dir={tmp_path}", "name=single", "parallel.threads=1",
        "model.width=16", "model.depth=2", "model.cutoff=4.0", "data.max_atoms=64",
    ])  # fmt: skip
    run = build_run(cfg, Dist())
    assert resume(run) and run.step == 8
    exported = torch.load(tmp_path / "single" / "model.pt", weights_only=False)["state_dict"]
    assert run.par.ema is not None
    for k, v in run.par.ema.state_dict().items():  # the shards, resharded onto one process
        torch.testing.assert_close(v, exported[k], rtol=0, atol=0)
    # resumed on one process the global batch halves: said with the changed settings
    from matscale.train.loop import train

    assert run.resumed_processes == 2
    train(with_overrides(cfg, ["train.steps=10", "train.keep_checkpoints=2"]), progress=False)
    said = capsys.readouterr().out
    assert "processes: 2 → 1 (the global batch: 2 → 1 × data.max_atoms=64 atoms" in said, said


def test_the_launch_position_comes_from_torchrun_or_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    from matscale.parallel.distributed import launch_position

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    # a batch script in an allocation of 4 tasks that runs matscale directly: one process
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    pos = launch_position()
    assert (pos.rank, pos.world, pos.local_rank) == (0, 1, 0)
    # srun's processes (the sweep runner's SLURM script)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    pos = launch_position()
    assert (pos.rank, pos.world, pos.local_rank, pos.main) == (3, 4, 1, False)
    # torchrun inside srun: torchrun's numbering wins
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    pos = launch_position()
    assert (pos.rank, pos.world, pos.local_rank) == (5, 8, 1)
