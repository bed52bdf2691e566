import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.physics import predict
from matscale.models.size import (
    PAPER_WIDTHS,
    build_on_meta,
    forward_flops,
    non_embedding_parameters,
    parameter_count,
    preset,
    training_flops,
    width_for,
)
from tests.physics.structures import graph, molecular, periodic

CONFIGS = [
    EGNNConfig(width=32),
    EGNNConfig(width=24, depth=4, norm="layer", force_head="direct", heads=("a", "b", "c")),
    EGNNConfig(width=20, norm="rms", readout_width=7, factored=False),
    EGNNConfig(width=20, coord_update=True, residual=True, heads=("a", "b")),
    EGNNConfig(width=12, coord_update=True, force_head="direct", factored=False),
    EGNNConfig(width=40, depth=1, n_radial=5),
    EGNNConfig(width=24, vector_channels=6, force_head="direct"),
    EGNNConfig(width=16, depth=2, vector_channels=8, factored=False),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_parameter_count_is_exact(cfg) -> None:
    model = EGNN(cfg)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    assert non_embedding_parameters(cfg) == parameter_count(cfg) - model.embedding.weight.numel()


def _float_graph(cfg: EGNNConfig):
    g = graph(periodic(), molecular())
    g = g.__class__(
        **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
    )
    if len(cfg.heads) == 1:
        g.source.zero_()
    return g


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_flops_match_the_flop_counter(cfg) -> None:
    model = EGNN(cfg)
    g = _float_graph(cfg)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(g)
    expected = forward_flops(cfg).total(atoms=len(g.numbers), edges=g.edge_index.shape[1])
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize("head", ["conservative", "direct"])
def test_training_flops_match_the_flop_counter(head: str) -> None:
    """A training step (forces, loss, backward) counted by torch's flop counter is the
    multiple of the forward pass that training_flops assumes, within what the counter sees
    beyond size.py's matmuls."""
    cfg = EGNNConfig(width=32, force_head=head)  # type: ignore[arg-type]
    model = EGNN(cfg)
    g = _float_graph(cfg)
    counter = FlopCounterMode(display=False)
    with counter:
        out = predict(model, g, forces=True, create_graph=head == "conservative")
        (out["energy"].abs().sum() + out["forces"].abs().sum()).backward()
    expected = training_flops(cfg, atoms=len(g.numbers), edges=g.edge_index.shape[1])
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.1)


def test_factoring_saves_flops_on_dense_graphs() -> None:
    plain = forward_flops(EGNNConfig(width=512, factored=False))
    fact = forward_flops(EGNNConfig(width=512, factored=True))
    atoms, edges = 1000, 30_000
    assert fact.total(atoms, edges) < 0.6 * plain.total(atoms, edges)


def test_width_for_hits_targets() -> None:
    def miss(w: int, target: float, depth: int = 3) -> float:
        return abs(parameter_count(EGNNConfig(width=w, depth=depth)) - target)

    for target in (1e4, 1e6, 1e8, 3.8e9):
        w = width_for(target, depth=3)
        assert miss(w, target) <= min(miss(w - 1, target), miss(w + 1, target))  # the closest
        assert miss(w, target) / target < (0.05 if target < 1e5 else 0.005)  # a width step
    w6 = width_for(2e8, depth=6)
    assert miss(w6, 2e8, depth=6) / 2e8 < 0.001
    for target in (3e3, 1e5):  # targets of non-embedding parameters (the N of scaling fits)
        w = width_for(target, depth=3, non_embedding=True, heads=("a", "b"))
        got = non_embedding_parameters(EGNNConfig(width=w, heads=("a", "b")))
        assert abs(got - target) / target < 0.1 and got != parameter_count(EGNNConfig(width=w))


def test_presets_span_10k_to_5b_and_paper_widths_grow() -> None:
    counts = [parameter_count(preset(n)) for n in ("10k", "1M", "1B", "5B")]
    assert counts[0] == pytest.approx(1e4, rel=0.05) and counts[-1] == pytest.approx(5e9, rel=0.01)
    paper = [parameter_count(EGNNConfig(width=w)) for w in PAPER_WIDTHS]
    assert paper == sorted(paper) and paper[0] < 2e6 and paper[-1] > 3.8e9
    with pytest.raises(ValueError, match="unknown size"):
        preset("7Q")


def test_five_billion_on_meta_in_seconds() -> None:
    cfg = preset("5B")
    start = time.perf_counter()
    model = build_on_meta(cfg)
    assert time.perf_counter() - start < 30
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == parameter_count(cfg)
