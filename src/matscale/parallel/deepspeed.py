"""DeepSpeed ZeRO stages 1, 2 and 3, configured from matscale's config (no hand-written JSON).

The step calls the wrapped module (``engine.module``), not the engine: calling the engine and
then ``autograd.grad(E, x, create_graph=True)`` fires DeepSpeed's post-backward hooks inside
the inner gradient (DeepSpeed 0.19). ``engine.backward`` and ``engine.step`` then reduce,
clip and update. This trains ZeRO-1 and -2 with conservative forces and every stage with
direct forces exactly like one process (tests/train/test_deepspeed.py). ZeRO-3 releases the
gathered parameters after the forward, and the double backward of conservative forces needs
them: use ``parallel.backend=fsdp`` (FSDP2 is ZeRO-3) for that combination.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from matscale.config import ParallelConfig, TrainConfig
from matscale.parallel.fsdp import StepHooks


def deepspeed_config(t: TrainConfig, p: ParallelConfig) -> dict[str, Any]:
    """The DeepSpeed config equivalent to ours: ZeRO stage, AdamW (torch's, no JIT build),
    clipping, bf16, optimizer offload."""
    zero: dict[str, Any] = {"stage": p.zero_stage}
    if p.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": 1,  # batches are bounded by atoms, not counted
        "gradient_accumulation_steps": 1,  # matscale accumulates micro-batches itself
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.betas),
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
        "gradient_clipping": t.grad_clip or 0.0,
        "bf16": {"enabled": p.precision == "bf16"},
        "steps_per_print": 10**9,
    }


def apply_deepspeed(
    model: nn.Module, t: TrainConfig, p: ParallelConfig, *, conservative: bool
) -> tuple[Any, torch.optim.Optimizer, StepHooks]:
    """Wrap ``model`` in a DeepSpeed engine; returns the engine, its optimizer and the step
    hooks that route backward and the optimizer step through it."""
    if p.zero_stage == 3 and conservative:
        raise ValueError(
            "DeepSpeed ZeRO-3 cannot train conservative forces (the double backward needs the "
            "parameters ZeRO-3 releases after the forward); use parallel.backend=fsdp, which "
            "shards like ZeRO-3, or model.force_head=direct"
        )
    if p.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage {p.zero_stage} is not 0, 1, 2 or 3")
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=deepspeed_config(t, p)
    )
    hooks = StepHooks(backward=engine.backward, step=engine.step)
    return engine, optimizer, hooks
