"""FSDP2 over two CPU processes (gloo) trains exactly like one process on the same global
batch, with conservative forces (double backward) and with direct forces."""

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from matscale.config import TrainConfig
from matscale.parallel.distributed import init_distributed
from matscale.parallel.fsdp import apply_fsdp, fsdp_step_hooks
from matscale.train.step import make_optimizer, train_step
from tests.train.test_distributed import (
    STEPS,
    _batches,
    _free_port,
    _model,
    _single,
    as_rank,
    leave,
)


def _worker(rank: int, port: int, out: str, force_head: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    as_rank(rank, port)
    d = init_distributed("ddp")
    model = apply_fsdp(_model(force_head), world=2, device_type="cpu")
    hooks = fsdp_step_hooks(model, conservative=force_head == "conservative")
    opt = make_optimizer(model, TrainConfig())
    batch = _batches()[rank]
    for _ in range(STEPS):
        train_step(model, [batch], opt, TrainConfig(), lr=1e-2, device=d.device, hooks=hooks)
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if rank == 0:
        torch.save(full, out)
    leave()


@pytest.mark.parametrize("force_head", ["conservative", "direct"])
def test_fsdp_matches_one_process(tmp_path: Path, force_head: str) -> None:
    out = tmp_path / "fsdp.pt"
    mp.start_processes(
        _worker, args=(_free_port(), str(out), force_head), nprocs=2, start_method="spawn"
    )
    sharded, single = torch.load(out), _single(force_head)
    for k in single:
        torch.testing.assert_close(sharded[k], single[k], rtol=1e-5, atol=1e-6)
