"""The one place where parallelism, precision and checkpointing meet the plain model, in a
fixed order: checks → EMA copy → compile → activation checkpointing → FSDP2 sharding or DDP
wrapping → precision.

Also the state-dict functions every backend shares: full (unsharded) model and optimizer
states, gathered on every process, so that checkpoints and exported models are the same file
whatever trained them, and a run may resume on another backend or world size; and the local
(sharded) states that FSDP checkpoints write through ``torch.distributed.checkpoint``
without gathering anything.
"""

from __future__ import annotations

import copy
import os
import shutil
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

from matscale.config import ConfigError, ParallelConfig, TrainConfig
from matscale.models.egnn import EGNNConfig
from matscale.parallel.checkpointing import apply_ac
from matscale.parallel.distributed import Dist, wrap_ddp
from matscale.parallel.fsdp import StepHooks, apply_fsdp, fsdp_step_hooks
from matscale.validation import ZERO3_EMA

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
    """Every process must run the same forward passes (FSDP and ZeRO-3 gather parameters in
    forward): evaluation then runs the whole set on every process."""
    optimizer: torch.optim.Optimizer | None = None
    """The backend's own optimizer (DeepSpeed), or None: the loop makes AdamW."""
    engine: Any = None
    """The DeepSpeed engine (its own checkpoint format), or None."""

    def gathered(self) -> AbstractContextManager[Any]:
        """A context in which ZeRO-3's partitioned parameters are whole (for state dicts)."""
        if self.engine is None or not self.lockstep:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()))


def shards_weights(cfg: ParallelConfig) -> bool:
    """Whether ``cfg`` shards the weights themselves over the processes (FSDP2, ZeRO-3): their
    forward passes gather weights, so every process must run the same ones."""
    return cfg.backend == "fsdp" or (cfg.backend == "deepspeed" and cfg.zero_stage == 3)


def check_forces_settings(
    cfg: ParallelConfig, model: nn.Module, *, conservative: bool, device: str = "cpu"
) -> None:
    """Refuse ``explicit_forces`` and ``compile`` where they cannot work, naming the setting:
    the written-out backward pass calls the layers' parts through two methods of their own,
    not ``forward``, so whatever acts on a layer's forward pass alone (ZeRO-3's gathers,
    activation checkpointing) would be skipped — FSDP2 is told of the methods
    (parallel/fsdp.py); and autograd's double backward cannot be compiled."""
    if cfg.explicit_forces and conservative:
        from matscale.models.explicit_forces import unsupported

        why = unsupported(model.config) if isinstance(model.config, EGNNConfig) else "no EGNN"
        clash = [
            name
            for name, on in (
                ("parallel.zero_stage=3", cfg.backend == "deepspeed" and cfg.zero_stage == 3),
                ("parallel.activation_checkpointing", cfg.activation_checkpointing),
                ("parallel.edge_chunk", cfg.edge_chunk > 0),
            )
            if on
        ]
        if why or clash:
            raise ConfigError(
                "parallel.explicit_forces cannot be used with "
                + (f"this model ({why})" if why else " or ".join(clash))
                + ": set parallel.explicit_forces=false"
            )
    if cfg.compile and conservative and not cfg.explicit_forces:
        raise ConfigError(
            "parallel.compile with conservative forces needs parallel.explicit_forces=true "
            "(autograd's double backward cannot be compiled)"
        )
    if cfg.compile and device == "cpu" and cpp_compiler() is None:
        raise ConfigError(
            "parallel.compile on a CPU writes C++ and needs a compiler (g++ or clang++; none "
            "found on PATH): install one, or set parallel.compile=false"
        )


def cpp_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would use on a CPU (Inductor writes C++), or None
    when none is on PATH."""
    for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_forward(model: nn.Module) -> nn.Module:
    """Replace ``model``'s forward pass by its ``torch.compile`` (dynamic shapes: batches
    differ in atoms and edges), keeping the module itself — its parameters, state dict and
    wrappers — as it is."""
    import torch._dynamo.config as dynamo
    import torch.fx.experimental._config as shapes

    # under DDP, dynamo splits the graph at gradient-bucket boundaries ("DDPOptimizer") so
    # that all-reduces overlap the backward; on the written-out forces' graph the split
    # fails to compile (torch 2.13: a float among a submodule's outputs). One graph, whose
    # gradients DDP all-reduces after the backward, trains the same weights.
    dynamo.optimize_ddp = False

    # no "duck" sizes: with them, dimensions that happen to be equal in the first batch share
    # one symbol, and the first batch's 2 structures met edge_index's 2 rows (specialised
    # when unpacked): every later number of structures compiled again
    shapes.use_duck_shape = False
    model.forward = torch.compile(model.forward, dynamic=True)
    return model


def parallelize(
    model: nn.Module, cfg: ParallelConfig, d: Dist, *, train: TrainConfig, conservative: bool
) -> Parallel:
    """Apply ``cfg`` to the plain ``model`` (already on its device)."""
    if cfg.backend == "deepspeed" and cfg.zero_stage == 3 and train.ema_decay:
        raise ConfigError(ZERO3_EMA)  # refused at load too (validation.zero3_problems)
    check_forces_settings(cfg, model, conservative=conservative, device=d.device.type)
    ema = copy.deepcopy(model) if train.ema_decay else None
    if cfg.compile:  # the EMA (evaluation only) keeps the plain forward pass
        compile_forward(model)
    if cfg.activation_checkpointing or cfg.edge_chunk:
        apply_ac(model, edge_chunk=cfg.edge_chunk, whole_layers=cfg.activation_checkpointing)
    hooks = StepHooks()
    step_model = model
    if cfg.backend == "fsdp":
        for m in (model, ema):
            if m is not None:
                apply_fsdp(
                    m,
                    world=d.world,
                    device_type=d.device.type,
                    bf16=cfg.precision == "bf16",
                    cpu_offload=cfg.cpu_offload,
                )
        hooks = fsdp_step_hooks(model, conservative=conservative, explicit=cfg.explicit_forces)
    elif cfg.backend == "ddp":
        step_model = wrap_ddp(model, d)
    elif cfg.backend == "deepspeed":
        from matscale.parallel.deepspeed import apply_deepspeed

        engine, optimizer, hooks = apply_deepspeed(model, train, cfg, conservative=conservative)
        # the step calls engine.module (see parallel/deepspeed.py); bf16 is DeepSpeed's own
        return Parallel(
            model=model,
            step_model=engine.module,
            ema=ema,
            hooks=hooks,
            autocast=nullcontext(),
            lockstep=shards_weights(cfg),
            optimizer=optimizer,
            engine=engine,
        )
    # under FSDP with bf16 the layers' weights also arrive in bf16 (MixedPrecisionPolicy); the
    # autocast context still decides each op's precision, so geometry stays float32
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
        lockstep=shards_weights(cfg),
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


def local_states(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, ema: nn.Module | None
) -> dict[str, Any]:
    """This process's model, optimizer and EMA states as they are held (DTensor shards under
    FSDP): what :func:`matscale.train.checkpoint.save_sharded` writes and
    :func:`matscale.train.checkpoint.load_sharded` fills in place. No communication."""
    states: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        states["optimizer"] = get_optimizer_state_dict(model, optimizer)
    if ema is not None:
        states["ema"] = get_model_state_dict(ema)
    return states


def set_local_states(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    ema: nn.Module | None,
    states: dict[str, Any],
) -> None:
    """Load states filled by :func:`~matscale.train.checkpoint.load_sharded` back into the
    model, optimizer and EMA."""
    set_model_state_dict(model, states["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, states["optimizer"])
    if ema is not None:
        set_model_state_dict(ema, states["ema"])
