"""FSDP2 (``fully_shard``): parameters, gradients and optimizer state sharded over processes
(ZeRO-3), per interaction layer and at the root, with an optional bf16 mixed-precision policy
and CPU offload. Applied to the plain model from outside.

Conservative forces differentiate the energy twice. FSDP2 reshards and reduce-scatters in its
post-backward hooks, which would fire inside the inner ``autograd.grad`` (the forces) and
leave nothing for the outer backward (the loss). :func:`fsdp_step_hooks` keeps the parameters
unsharded and gradient sync off through the forces, turns sync on for the loss's backward, and
reshards afterwards — checked against a single process in tests/train/test_fsdp.py. Every
layer stays gathered from the forward to the end of the backward: a whole copy of the weights
per process, which is what stops a billion parameters on a small machine.

Written-out forces (``parallel.explicit_forces``) need none of that: the forces are an
ordinary forward computation, a reverse sweep calling each layer's ``explicit_reverse``, and
training takes one first-order backward. Both of a layer's methods are registered with FSDP2
as forward methods, so each call gathers the layer and reshards it after, and the backward
gathers it again per call — one or two layers gathered at a time, as for direct forces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepHooks:
    """Calls a training step makes around its forward and backward (no-ops by default)."""

    before_forward: Any = None
    before_backward: Any = None
    after_backward: Any = None
    backward: Any = None
    """Replaces ``loss.backward()`` (DeepSpeed's ``engine.backward``)."""
    step: Any = None
    """Replaces gradient clipping and ``optimizer.step()`` (DeepSpeed's ``engine.step``)."""

    def call(self, name: str) -> None:
        """Run the hook ``name`` if it is set."""
        hook = getattr(self, name)
        if hook is not None:
            hook()


#: The layer methods the written-out forces call besides ``forward`` (models/egnn.py).
EXPLICIT_LAYER_METHODS = ("explicit_forward", "explicit_reverse")


def apply_fsdp(
    model: nn.Module,
    *,
    world: int,
    device_type: str,
    bf16: bool = False,
    cpu_offload: bool = False,
) -> nn.Module:
    """Shard ``model`` (in place) over ``world`` processes: each of ``model.layers``, then the
    root. With ``bf16`` the interaction layers' parameters are gathered in bf16 (half the
    all-gather traffic and memory) and their gradients reduced in float32; their inputs are
    not cast (positions and edge vectors stay float32: the caller's autocast picks each op's
    precision), and the root (embedding, readout, reference energies) stays float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    mesh = init_device_mesh(device_type, (world,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    layer_kwargs = dict(kwargs)
    if bf16:
        layer_kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
        )
    for layer in getattr(model, "layers", []):
        fully_shard(layer, **layer_kwargs)
        for method in EXPLICIT_LAYER_METHODS:
            if hasattr(layer, method):
                register_fsdp_forward_method(layer, method)
    fully_shard(model, **kwargs)
    return model


def fsdp_step_hooks(model: nn.Module, conservative: bool, explicit: bool = False) -> StepHooks:
    """The step hooks that make FSDP2 correct under conservative forces taken by autograd
    (see module doc); none for direct or written-out (``explicit``) forces."""
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not conservative or explicit:
        return StepHooks()

    def before_forward() -> None:
        for m in modules:
            m.set_reshard_after_backward(False)
            m.set_requires_gradient_sync(False)

    def before_backward() -> None:
        for m in modules:
            m.set_requires_gradient_sync(True)

    def after_backward() -> None:
        for m in modules:
            m.reshard()
            m.set_reshard_after_backward(True)

    return StepHooks(before_forward, before_backward, after_backward)
