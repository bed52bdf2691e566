"""DeepSpeed ZeRO over two CPU processes trains exactly like one process on the same global
batch: ZeRO-1/2 with conservative and direct forces, ZeRO-3 with direct forces — its model
built already sharded (``zero.Init``), so this also checks that it draws the same weights."""

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from matscale.config import ParallelConfig, TrainConfig
from matscale.parallel.deepspeed import apply_deepspeed, building, deepspeed_config
from matscale.parallel.launch import free_port
from matscale.train.step import train_step
from tests.train.test_distributed import (
    STEPS,
    _batches,
    _model,
    _single,
    as_rank,
    leave,
)

pytest.importorskip("deepspeed")


def _worker(rank: int, port: int, out: str, force_head: str, stage: int) -> None:
    as_rank(rank, port)
    t = TrainConfig(lr=1e-2)
    p = ParallelConfig(backend="deepspeed", zero_stage=stage)
    with building(t, p):
        model = _model(force_head)
    if stage == 3:  # no process ever held the whole model
        assert all(w.numel() == 0 for w in model.parameters())
    engine, optimizer, hooks = apply_deepspeed(
        model, t, p, conservative=force_head == "conservative"
    )
    batch = _batches()[rank]
    for _ in range(STEPS):
        train_step(
            engine.module, [batch], optimizer, t, lr=1e-2, device=torch.device("cpu"), hooks=hooks
        )
    if stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    else:
        state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    if rank == 0:
        torch.save(state, out)
    leave()


@pytest.mark.parametrize(
    ("force_head", "stage"),
    [("conservative", 1), ("conservative", 2), ("direct", 2), ("direct", 3)],
)
def test_zero_matches_one_process(tmp_path: Path, force_head: str, stage: int) -> None:
    out = tmp_path / "ds.pt"
    mp.start_processes(
        _worker, args=(free_port(), str(out), force_head, stage), nprocs=2, start_method="spawn"
    )
    sharded, single = torch.load(out), _single(force_head)
    for k in single:
        torch.testing.assert_close(sharded[k], single[k], rtol=1e-5, atol=1e-6)


def test_conservative_zero3_is_refused_with_the_way_out() -> None:
    with pytest.raises(ValueError, match=r"parallel\.backend=fsdp"):
        apply_deepspeed(
            _model("conservative"),
            TrainConfig(),
            ParallelConfig(backend="deepspeed", zero_stage=3),
            conservative=True,
        )


def test_config_follows_ours() -> None:
    cfg = deepspeed_config(
        TrainConfig(lr=3e-4, grad_clip=None),
        ParallelConfig(zero_stage=2, cpu_offload=True, precision="bf16"),
    )
    assert cfg["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert cfg["optimizer"]["params"]["lr"] == 3e-4 and cfg["optimizer"]["params"]["torch_adam"]
    assert cfg["gradient_clipping"] == 0.0 and cfg["bf16"]["enabled"]


def _bf16_worker(rank: int, port: int, out: str) -> None:
    as_rank(rank, port)
    t, p = TrainConfig(), ParallelConfig(backend="deepspeed", zero_stage=2, precision="bf16")
    model = _model("direct")
    model.reference_energy.fill_(-1234.56789)  # eV; bf16 would keep ~3 digits of it
    engine, _, _ = apply_deepspeed(model, t, p, conservative=False)
    if rank == 0:
        torch.save(
            {
                "reference": engine.module.reference_energy.clone(),
                "weights": {w.dtype for w in engine.module.parameters()},
            },
            out,
        )
    leave()


def test_bf16_engines_keep_the_float64_reference_energies(tmp_path: Path) -> None:
    out = tmp_path / "bf16.pt"
    mp.start_processes(_bf16_worker, args=(free_port(), str(out)), nprocs=2, start_method="spawn")
    saved = torch.load(out)
    assert saved["weights"] == {torch.bfloat16}  # the engine did cast the weights
    assert saved["reference"].dtype == torch.float64
    assert torch.all(saved["reference"] == -1234.56789)


def test_one_process_without_a_launcher_trains(tiny_store: Path, tmp_path: Path) -> None:
    """`matscale train parallel.backend=deepspeed` as one process, without torchrun, failed
    inside DeepSpeed (KeyError 'LOCAL_RANK'), as DDP and FSDP do not. In a fresh process: the
    run sets the launcher's variables for DeepSpeed."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}

    def deepspeed_train(name: str, steps: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "matscale", "train", f"data.store={tiny_store}",
             f"out_dir={tmp_path}", f"name={name}", "model.width=8", "model.depth=2",
             "model.cutoff=4.0", "data.max_atoms=96", f"train.steps={steps}",
             "train.warmup_steps=1", "train.eval_every=3", "parallel.backend=deepspeed",
             "parallel.zero_stage=2", "--no-progress"],
            capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=600,
        )  # fmt: skip

    run = deepspeed_train("ds", 3)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "ds" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3]
    # a run trained without DeepSpeed is not resumed by it: its optimizer state is ours
    from matscale.config import load
    from matscale.train.loop import train

    train(load(None, [f"data.store={tiny_store}", f"out_dir={tmp_path}", "name=plain",
                      "model.width=8", "model.depth=2", "model.cutoff=4.0", "data.max_atoms=96",
                      "train.steps=3", "train.eval_every=3"]), progress=False)  # fmt: skip
    run = deepspeed_train("plain", 6)
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr[-2000:]
    assert "trained with parallel.backend=none, whose optimizer state DeepSpeed cannot read" in (
        run.stderr
    )
