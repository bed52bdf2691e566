"""Activation checkpointing, of whole layers and of edge chunks, gives the same gradients,
conservative forces included."""

import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.parallel.checkpointing import apply_ac
from tests.physics.structures import graph, molecular, periodic


@pytest.mark.parametrize("force_head", ["conservative", "direct"])
@pytest.mark.parametrize(("edge_chunk", "whole_layers"), [(0, True), (37, True), (37, False)])
def test_same_gradients_with_and_without_checkpointing(
    force_head: str, edge_chunk: int, whole_layers: bool
) -> None:
    torch.manual_seed(0)
    cfg = EGNNConfig(width=16, depth=3, heads=("a", "b"), force_head=force_head, vector_channels=4)
    plain = EGNN(cfg).double()
    ac = apply_ac(copy.deepcopy(plain), edge_chunk=edge_chunk, whole_layers=whole_layers)
    wrapped = [isinstance(layer, CheckpointWrapper) for layer in ac.layers]
    assert all(wrapped) if whole_layers else not any(wrapped)
    g = graph(periodic(), molecular())
    assert g.edge_index.shape[1] > 3 * 37  # several chunks, the last one partial
    chunks = []
    for layer in ac.layers:
        inner = getattr(layer, "_checkpoint_wrapped_module", layer)
        inner._edge_terms = _counting(inner._edge_terms, chunks)
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
    if edge_chunk:  # the edges really went through in chunks
        assert max(chunks) <= edge_chunk and len(chunks) >= 3 * 3
    assert set(ac.state_dict()) == set(plain.state_dict())  # checkpoints load either way


def _counting(fn, sizes: list[int]):
    def counted(x, v, edge_index, *rest):
        sizes.append(edge_index.shape[1])
        return fn(x, v, edge_index, *rest)

    return counted


def test_needs_layers() -> None:
    with pytest.raises(TypeError, match="layers"):
        apply_ac(torch.nn.Linear(2, 2))
