"""One optimizer step, the optimizer, and the EMA of the weights."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

from matscale.allocator import fit_heap_to
from matscale.config import TrainConfig
from matscale.data.atomgraph import AtomGraph
from matscale.models.physics import predict
from matscale.parallel.distributed import all_max, all_sum
from matscale.parallel.fsdp import StepHooks
from matscale.train.loss import loss as loss_fn


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, norms, embeddings, radial
    frequencies); fused on GPU."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen (a fine-tuned backbone): nothing to update
            continue
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available() and next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, fused=fused or None)


def ema_decay_at(decay: float, step: int) -> float:
    """The EMA's decay after ``step`` optimizer steps: ``decay``, ramped up from the start as
    ``(1 + step) / (10 + step)`` (torch_ema's and TensorFlow's schedule). The EMA starts as a
    copy of the initial weights; at a constant 0.99, 0.99²⁰⁰ = 13 % of them were still in it
    after 200 steps, and a short run reported and exported mostly its untrained start."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameters and buffers alike."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)


def train_step(
    model: torch.nn.Module,
    micro_batches: list[AtomGraph],
    optimizer: torch.optim.Optimizer,
    t: TrainConfig,
    *,
    lr: float,
    device: torch.device,
    autocast: AbstractContextManager | None = None,
    hooks: StepHooks | None = None,
    explicit_forces: bool = False,
) -> dict[str, Any]:
    """Forward, forces (and stress), loss and backward over the micro-batches, then one
    clipped AdamW step at learning rate ``lr``. Returns loss parts and counts for the log.
    ``hooks`` are the calls a sharding backend needs around forward and backward (FSDP2).
    ``explicit_forces``: forces from the model's written-out backward pass, not autograd's.

    Each micro-batch's loss is weighted by its share of the atoms of the whole step, over
    every process: accumulation over micro-batches and data parallelism (whose gradients DDP
    averages, hence the factor ``world``) give the gradient of the same atom-weighted loss, so
    2 processes x 1 batch equal 1 process x 2 micro-batches (tested).
    """
    weights = {"energy": t.energy_weight, "forces": t.force_weight, "stress": t.stress_weight}
    conservative = getattr(_plain(model).config, "force_head", "conservative") == "conservative"
    local_atoms = sum(len(g.numbers) for g in micro_batches)
    world = dist.get_world_size() if dist.is_initialized() else 1
    total_atoms = float(all_sum(torch.tensor(float(local_atoms))))
    out: dict[str, Any] = {
        "loss": 0.0,
        "atoms": local_atoms,
        "structures": sum(g.num_graphs for g in micro_batches),
        "edges": sum(int(g.edge_index.shape[1]) for g in micro_batches),
    }
    hooks = hooks or StepHooks()
    width = getattr(_plain(model).config, "width", 0)
    for g in micro_batches:
        if device.type == "cpu":  # the largest tensors: [E, H] float32 of the edges
            fit_heap_to(int(g.edge_index.shape[1]) * width * 4)
        g = g.to(device, non_blocking=True)
        hooks.call("before_forward")
        with autocast or nullcontext():
            pred = predict(
                model,
                g,
                forces=True,
                stress=t.stress_weight > 0 and conservative,
                create_graph=conservative,
                explicit=explicit_forces and conservative,
            )
        value, parts = loss_fn(
            pred,
            g,
            weights=weights,
            kind=t.loss,
            delta=t.huber_delta,
            force_weighting=t.force_weighting,
            force_kind=t.force_loss,
        )
        if not finite_everywhere(value):
            # a backward through a non-finite loss would spread NaN into every weight: skip
            # the step (the loop counts skipped steps and stops after too many in a row)
            out["loss"] = float(value.detach())
            return _skip(out, "loss", model, optimizer, hooks)
        share = len(g.numbers) / total_atoms
        hooks.call("before_backward")
        scaled = value * (share * world)
        hooks.backward(scaled) if hooks.backward else scaled.backward()
        hooks.call("after_backward")
        local = len(g.numbers) / local_atoms  # the log shows this process's weighted loss
        out["loss"] += float(value.detach()) * local
        for k, v in parts.items():
            out[k] = out.get(k, 0.0) + v * local
    for group in optimizer.param_groups:
        group["lr"] = lr
    if hooks.step is not None:  # the engine clips, steps and zeroes
        hooks.step()
        return out
    # the global norm (over every process's shards) also tells whether a finite loss gave a
    # non-finite gradient; infinity as the bound measures without clipping
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
    out["grad_norm"] = float(getattr(norm, "full_tensor", lambda: norm)())  # DTensor
    if not math.isfinite(out["grad_norm"]):
        return _skip(out, "gradient", model, optimizer, hooks)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out


def finite_everywhere(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process (a collective: every process decides
    alike, so that all skip a step together)."""
    bad = torch.tensor(0.0 if bool(torch.isfinite(value.detach()).all()) else 1.0)
    return not bool(all_max(bad))


def _skip(
    out: dict[str, Any],
    what: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    hooks: StepHooks,
) -> dict[str, Any]:
    """Drop the step's gradients and report it as skipped because ``what`` was not finite."""
    if hooks.step is None:
        optimizer.zero_grad(set_to_none=True)
    else:  # DeepSpeed holds (partitions of) the gradients in its own optimizer
        optimizer.zero_grad()
    model.zero_grad(set_to_none=True)
    out["skipped"] = what
    return out


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)
