"""Process groups from torchrun's or SLURM's environment, and data-parallel wrapping.

On CPU the backend is gloo, on GPU NCCL; one process per GPU (``LOCAL_RANK`` picks it). Model
code never sees any of this: :func:`wrap_ddp` is applied to the plain model from outside.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def main(self) -> bool:
        """True on the process that writes logs and checkpoints."""
        return self.rank == 0


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return default


def launch_position() -> Dist:
    """Rank, world size and local rank this process was launched with, on the CPU: from
    torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) or else from ``srun`` (``SLURM_PROCID``,
    ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``); one process otherwise. The one place that
    reads them (training, the sweep runner and the CLI alike).

    SLURM's variables count only under ``srun``: a batch script that runs ``matscale``
    directly in an allocation of N tasks is one process, not rank 0 of N waiting for the rest.
    """
    if "RANK" in os.environ or "SLURM_STEP_NUM_TASKS" not in os.environ:
        return Dist(
            rank=_env_int("RANK", default=0),
            world=_env_int("WORLD_SIZE", default=1),
            local_rank=_env_int("LOCAL_RANK", default=0),
        )
    return Dist(
        rank=_env_int("SLURM_PROCID", default=0),
        world=_env_int("SLURM_STEP_NUM_TASKS", default=1),
        local_rank=_env_int("SLURM_LOCALID", default=0),
    )


def init_distributed(backend: str, timeout_s: float = 600.0) -> Dist:
    """Join the process group when ``backend`` is not ``none``; a single process otherwise.

    Rank and world size come from :func:`launch_position` (torchrun or srun; under srun
    ``MASTER_ADDR``/``MASTER_PORT`` must be set by the job script). A collective that waits
    more than ``timeout_s`` seconds for the other processes fails instead of hanging.
    """
    use_cuda = torch.cuda.is_available()
    if backend == "none":
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    pos = launch_position()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if backend == "deepspeed":
        # what torchrun would have set, which DeepSpeed reads itself: a run started without
        # a launcher failed inside it with KeyError 'LOCAL_RANK'
        for name, value in (("RANK", pos.rank), ("WORLD_SIZE", pos.world),
                            ("LOCAL_RANK", pos.local_rank)):  # fmt: skip
            os.environ.setdefault(name, str(value))
    if use_cuda:
        torch.cuda.set_device(pos.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            rank=pos.rank,
            world_size=pos.world,
            timeout=timedelta(seconds=timeout_s),
        )
    device = torch.device(f"cuda:{pos.local_rank}") if use_cuda else torch.device("cpu")
    return Dist(rank=pos.rank, world=pos.world, local_rank=pos.local_rank, device=device)


def wrap_ddp(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """DistributedDataParallel over the process group (identity on one process)."""
    if d.world == 1 or not dist.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [d.device.index] if d.device.type == "cuda" else None
    # A readout's [1, H] weight gets its gradient with strides (1, 1), its bucket view has
    # (H, 1): the same memory layout (a dimension of size 1 has no stride to speak of), which
    # DDP's reducer still warned about, 4 lines per process in every run
    warnings.filterwarnings(
        "ignore",
        message=r"Grad strides do not match bucket view strides[\s\S]*"
        r"grad\.sizes\(\) = \[1, \d+\], strides\(\) = \[1, 1\]",
        category=UserWarning,
    )
    # Every parameter gets a gradient on every process (readout heads run even on no atoms),
    # so DDP need not search for unused parameters.
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (a copy; identity on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum of ``t`` over all processes (a copy; identity on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process did (its
    connection closed, or it stopped answering until the timeout)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        s in text for s in ("gloo/transport", "Connection closed by peer", "Timed out waiting")
    )


def finish(*, failed: bool = False) -> None:
    """Leave the process group: after a barrier when the run ended well; at once when this
    process ``failed``, so that it exits (and its peers' collectives fail on the closed
    connection) instead of waiting in a barrier the others never reach."""
    if not dist.is_initialized():
        return
    if not failed:
        dist.barrier()
    dist.destroy_process_group()


def hardware(d: Dist) -> dict[str, object]:
    """What a run ran on, for model cards: processes, device, CPU model, threads, torch."""
    import platform

    info: dict[str, object] = {
        "processes": d.world,
        "device": d.device.type,
        "threads_per_process": torch.get_num_threads(),
        "cpu": _cpu_model() or platform.processor() or platform.machine(),
        "torch": str(torch.__version__),  # a plain str: model files load with weights_only
    }
    if d.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(d.device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: the caller falls back to platform's name
        return ""
    return ""
