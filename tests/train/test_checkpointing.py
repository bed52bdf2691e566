"""Activation checkpointing gives the same gradients, conservative forces included."""

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.parallel.checkpointing import apply_ac
from tests.physics.structures import graph, molecular, periodic


@pytest.mark.parametrize("force_head", ["conservative", "direct"])
def test_same_gradients_with_and_without_checkpointing(force_head: str) -> None:
    torch.manual_seed(0)
    plain = EGNN(EGNNConfig(width=16, depth=3, heads=("a", "b"), force_head=force_head)).double()
    ac = apply_ac(copy.deepcopy(plain))
    assert all(isinstance(layer, CheckpointWrapper) for layer in ac.layers)
    g = graph(periodic(), molecular())
    grads = []
    for model in (plain, ac):
        out = predict(model, g, stress=force_head == "conservative", create_graph=True)
        loss = out["energy_net"].sum() + out["forces"].pow(2).sum()
        if "stress" in out:
            loss = loss + out["stress"].pow(2).sum()
        loss.backward()
        grads.append(
            {
                k.replace("_checkpoint_wrapped_module.", ""): p.grad
                for k, p in model.named_parameters()
            }
        )
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-12, atol=1e-14)
    assert set(ac.state_dict()) == set(plain.state_dict())  # checkpoints load either way


def test_needs_layers() -> None:
    with pytest.raises(TypeError, match="layers"):
        apply_ac(torch.nn.Linear(2, 2))
