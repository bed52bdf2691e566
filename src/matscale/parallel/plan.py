"""The one place where parallelism, precision and checkpointing meet the plain model, in a
fixed order: EMA copy → activation checkpointing → FSDP2 sharding or DDP wrapping → precision.

Also the state-dict functions every backend shares: full (unsharded) model and optimizer
states, gathered on every process, so that checkpoints and exported models are the same file
whatever trained them, and a run may resume on another backend or world size.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from matscale.config import ParallelConfig
from matscale.parallel.checkpointing import apply_ac
from matscale.parallel.distributed import Dist, wrap_ddp
from matscale.parallel.fsdp import StepHooks, apply_fsdp, fsdp_step_hooks

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class Parallel:
    """A model made ready for training on this process."""

    model: nn.Module
    """The plain model, possibly with checkpointed or sharded layers (owns the parameters)."""
    step_model: nn.Module
    """What the training step calls: ``model``, or its DDP wrapper."""
    ema: nn.Module | None
    """The moving average of the weights, sharded like ``model`` under FSDP."""
    hooks: StepHooks
    """Calls around forward and backward that the backend needs."""
    autocast: AbstractContextManager[Any]
    """The compute-precision context of forward passes."""
    lockstep: bool
    """Every process must run the same forward passes (FSDP gathers parameters in forward):
    evaluation then runs the whole set on every process."""


def parallelize(
    model: nn.Module, cfg: ParallelConfig, d: Dist, *, ema_decay: float | None, conservative: bool
) -> Parallel:
    """Apply ``cfg`` to the plain ``model`` (already on its device)."""
    ema = copy.deepcopy(model) if ema_decay else None
    if cfg.activation_checkpointing:
        apply_ac(model)
    hooks = StepHooks()
    step_model = model
    if cfg.backend == "fsdp":
        for m in (model, ema):
            if m is not None:
                apply_fsdp(m, world=d.world, device_type=d.device.type, cpu_offload=cfg.cpu_offload)
        hooks = fsdp_step_hooks(model, conservative=conservative)
    elif cfg.backend == "ddp":
        step_model = wrap_ddp(model, d)
    autocast: AbstractContextManager[Any] = (
        torch.autocast(d.device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16"
        else nullcontext()
    )
    return Parallel(
        model=model,
        step_model=step_model,
        ema=ema,
        hooks=hooks,
        autocast=autocast,
        lockstep=cfg.backend == "fsdp",
    )


def model_state(model: nn.Module) -> dict[str, Any]:
    """The full model state on the CPU (a collective under FSDP: call on every process)."""
    return get_model_state_dict(model, options=FULL)


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """Load a full model state into a plain, DDP or FSDP model (on every process)."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state keyed by parameter names (a collective under FSDP)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load :func:`optimizer_state` (on every process)."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
