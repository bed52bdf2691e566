"""FSDP2 over two CPU processes (gloo) trains exactly like one process on the same global
batch, with conservative forces (double backward), written out (each layer gathered per call
of its two methods, also compiled) and with direct forces; with its bf16
MixedPrecisionPolicy, like one process under bf16 autocast."""

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from matscale.config import TrainConfig
from matscale.parallel.distributed import init_distributed
from matscale.parallel.fsdp import apply_fsdp, fsdp_step_hooks
from matscale.parallel.launch import free_port
from matscale.parallel.plan import compile_forward
from matscale.train.step import make_optimizer, train_step
from tests.train.test_distributed import (
    STEPS,
    _batches,
    _model,
    _single,
    as_rank,
    bf16_autocast,
    leave,
)


def _worker(rank: int, port: int, out: str, force_head: str, bf16: bool) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    as_rank(rank, port)
    d = init_distributed("ddp")
    explicit = "written out" in force_head
    compiled = force_head.endswith("compiled")
    force_head = force_head.split(",")[0]
    model = _model(force_head)
    if compiled:  # as parallelize does: compiled first, then sharded
        compile_forward(model)
    model = apply_fsdp(model, world=2, device_type="cpu", bf16=bf16)
    hooks = fsdp_step_hooks(model, conservative=force_head == "conservative", explicit=explicit)
    opt = make_optimizer(model, TrainConfig())
    batch = _batches()[rank]
    for _ in range(STEPS):
        train_step(
            model,
            [batch],
            opt,
            TrainConfig(),
            lr=1e-2,
            device=d.device,
            hooks=hooks,
            autocast=bf16_autocast(bf16),
            explicit_forces=explicit,
        )
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        torch.save(full, out)
    leave()


@pytest.mark.parametrize(
    ("force_head", "bf16"),
    [
        ("conservative", False),
        ("conservative, written out", False),
        ("conservative, written out, compiled", False),
        ("direct", False),
        ("conservative", True),
    ],
)
def test_fsdp_matches_one_process(tmp_path: Path, force_head: str, bf16: bool) -> None:
    out = tmp_path / "fsdp.pt"
    mp.start_processes(
        _worker, args=(free_port(), str(out), force_head, bf16), nprocs=2, start_method="spawn"
    )
    sharded, single = torch.load(out), _single(force_head.split(",")[0], bf16)
    for k in single:
        # bf16: the same bf16 products either way; only the order of float32 sums differs
        tol = {"rtol": 1e-3, "atol": 1e-4} if bf16 else {"rtol": 1e-5, "atol": 1e-6}
        if force_head.endswith("compiled"):  # fused kernels: float32 sums in another order
            tol = {"rtol": 1e-4, "atol": 1e-4}
        elif "written out" in force_head:  # its radial products too (test_distributed's note)
            tol = {"rtol": 1e-4, "atol": 1e-5}
        assert sharded[k].dtype == single[k].dtype  # master weights stay float32
        torch.testing.assert_close(sharded[k], single[k], **tol)
