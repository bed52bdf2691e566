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

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from matscale.config import ParallelConfig, TrainConfig
from matscale.errors import ConfigError
from matscale.parallel.fsdp import StepHooks
from matscale.validation import ZERO3_CONSERVATIVE

#: ZeRO-3's buckets, in parameters: gradients reduced per bucket, weights prefetched per
#: bucket, weights gathered at once, AdamW applied per sub-group. DeepSpeed's defaults (5e8
#: reduced, 1e9 gathered and per optimizer sub-group) let one process hold 2 GB of gradient
#: buckets and the whole of a billion float32 weights besides its shards — more than a small
#: machine has for them; 2e7 (80 MB in float32) is two of the paper's H × H matrices at
#: width 3,000 and keeps buckets large enough to stream (at 5e7 a 1.04B model on 24 GiB took
#: one step and ran out of memory in the second: benchmarks/billion.py).
ZERO3_BUCKET_PARAMETERS = 20_000_000


def deepspeed_config(t: TrainConfig, p: ParallelConfig) -> dict[str, Any]:
    """The DeepSpeed config equivalent to ours: ZeRO stage, AdamW (torch's, no JIT build),
    clipping, bf16, optimizer offload, and for ZeRO-3 buckets sized for memory."""
    zero: dict[str, Any] = {"stage": p.zero_stage}
    if p.zero_stage == 3:
        zero |= {
            "reduce_bucket_size": ZERO3_BUCKET_PARAMETERS,
            "stage3_prefetch_bucket_size": ZERO3_BUCKET_PARAMETERS,
            "stage3_max_live_parameters": 2 * ZERO3_BUCKET_PARAMETERS,
            "stage3_max_reuse_distance": 2 * ZERO3_BUCKET_PARAMETERS,
            "sub_group_size": 2 * ZERO3_BUCKET_PARAMETERS,
        }
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


def building(t: TrainConfig, p: ParallelConfig) -> AbstractContextManager[Any]:
    """The context the plain model is built in: for ZeRO-3, DeepSpeed's ``zero.Init``, which
    shards each module's weights as soon as its constructor returns, so no process ever holds
    the whole model (a billion float32 weights are 4 GB on each process otherwise). The
    model's weights are drawn inside its modules' constructors (models/egnn.py), so they are
    the ones a plain build draws (tests/train/test_deepspeed.py)."""
    if p.backend != "deepspeed" or p.zero_stage != 3:
        return nullcontext()
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import DeepSpeedTensorOverride

    return deepspeed.zero.Init(
        config_dict_or_path=deepspeed_config(t, p),
        # it would replace torch.nn.functional.linear for the whole process
        mem_efficient_linear=False,
        # tensors made on its device, but in the dtype the model asks for: by default every
        # floating tensor built inside becomes the weights' dtype, the float64 reference
        # energies (eV, summed over thousands of atoms) too
        tensor_overrides=[DeepSpeedTensorOverride.device],
    )


def apply_deepspeed(
    model: nn.Module, t: TrainConfig, p: ParallelConfig, *, conservative: bool
) -> tuple[Any, torch.optim.Optimizer, StepHooks]:
    """Wrap ``model`` in a DeepSpeed engine; returns the engine, its optimizer and the step
    hooks that route backward and the optimizer step through it."""
    if p.zero_stage == 3 and conservative:  # a fine-tuned model's own force head, say
        raise ConfigError(ZERO3_CONSERVATIVE)
    if p.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage {p.zero_stage} is not 0, 1, 2 or 3")
    import deepspeed

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=deepspeed_config(t, p)
    )
    hooks = StepHooks(backward=engine.backward, step=engine.step)
    return engine, optimizer, hooks
