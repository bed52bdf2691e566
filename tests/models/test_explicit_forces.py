"""Forces written out equal autograd's: energies, forces, stress and the training gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from matscale.config import ConfigError, ParallelConfig
from matscale.models.egnn import EGNN, EGNNConfig
from matscale.models.explicit_forces import predict_explicit, unsupported
from matscale.models.physics import predict
from matscale.parallel.plan import check_forces_settings
from tests.physics.structures import compressed, graph, molecular, periodic

VARIANTS = {
    "default": {},
    "residual": {"residual": True},
    "plain first edge linear": {"factored": False},
    "no pair prior": {"pair_repulsion": False},
}


def _model(seed: int = 0, **fields) -> EGNN:
    torch.manual_seed(seed)
    model = EGNN(EGNNConfig(width=16, depth=3, n_radial=6, heads=("a", "b"), **fields)).double()
    with torch.no_grad():  # scales and radial frequencies away from their initial values
        model.energy_scale.copy_(torch.tensor([1.3, 0.7]))
        model.radial.frequencies.mul_(1.1)
    return model


def _loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return out["energy_net"].sum() + out["forces"].pow(2).sum() + 100 * out["stress"].pow(2).sum()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_written_out_derivatives_equal_autograds(variant: str) -> None:
    """Two heads, a periodic cell with contacts inside the pair prior's range and a molecule
    in one batch: energies, forces, stress, and the gradient of a loss of all three (what
    training differentiates), to float64 round-off."""
    model = _model(**VARIANTS[variant])
    g = graph(compressed(), molecular(), periodic(1))
    auto = predict(model, g, stress=True, create_graph=True)
    written = predict(model, g, stress=True, explicit=True)
    for key in ("energy", "energy_net", "node_energy", "forces", "stress"):
        torch.testing.assert_close(written[key], auto[key], rtol=1e-10, atol=1e-10)
    if model.config.pair_repulsion:
        assert auto["forces"].abs().max() > 1.0  # eV/Å: the prior's contacts push hard
    grads = []
    for out in (auto, written):
        model.zero_grad()
        _loss(out).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "radial.frequencies" in grads[0]
    for name, g_auto in grads[0].items():
        torch.testing.assert_close(grads[1][name], g_auto, rtol=1e-9, atol=1e-12, msg=name)


def test_float32_agrees_to_round_off_and_energies_alone_need_no_sweep() -> None:
    model = _model(1).float()
    g = graph(periodic(2), molecular("CH4"))
    g = g.__class__(
        **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
    )
    auto, written = predict(model, g, stress=True), predict_explicit(model, g, stress=True)
    torch.testing.assert_close(written["forces"], auto["forces"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(written["stress"], auto["stress"], rtol=1e-4, atol=1e-6)
    only = predict_explicit(model, g, forces=False)
    assert "forces" not in only
    torch.testing.assert_close(only["energy"], auto["energy"])


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"force_head": "direct"}, "direct force head"),
        ({"norm": "layer"}, "norm layer"),
        ({"coord_update": True}, "coordinate channel"),
        ({"vector_channels": 2}, "vector channels"),
        ({"activation": "gelu"}, "activation gelu"),
    ],
)
def test_layers_it_does_not_cover_are_refused(fields: dict, words: str) -> None:
    cfg = EGNNConfig(width=8, **fields)
    assert words in (unsupported(cfg) or "")
    with pytest.raises(ValueError, match=words):
        predict_explicit(EGNN(cfg), graph(periodic()))
    with pytest.raises(ConfigError, match=f"parallel.explicit_forces.*{words}"):
        check_forces_settings(ParallelConfig(explicit_forces=True), EGNN(cfg), conservative=True)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"explicit_forces": True, "activation_checkpointing": True}, "activation_checkp"),
        ({"explicit_forces": True, "edge_chunk": 1000}, "parallel.edge_chunk"),
        ({"explicit_forces": True, "backend": "deepspeed", "zero_stage": 3}, "zero_stage=3"),
        ({"compile": True}, "needs parallel.explicit_forces=true"),
    ],
)
def test_settings_it_cannot_work_with_are_named(settings: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        check_forces_settings(
            ParallelConfig(**settings), EGNN(EGNNConfig(width=8)), conservative=True
        )


def test_training_with_written_out_forces_follows_autograds(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same run, forces by autograd or written out: the same losses step by step (float32
    round-off apart)."""
    from matscale.config import load
    from matscale.models import explicit_forces
    from matscale.train.loop import train

    calls = []
    real = explicit_forces.predict_explicit
    monkeypatch.setattr(
        explicit_forces, "predict_explicit", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    losses = []
    for explicit in (False, True):
        cfg = load(None, [f"data.store={tiny_store}", f"out_dir={tmp_path}", f"name=e{explicit}",
                          "train.steps=6", "train.log_every=1", "train.eval_every=100",
                          "model.width=16", "model.depth=2", "model.cutoff=4.0",
                          "train.stress_weight=1.0",
                          f"parallel.explicit_forces={str(explicit).lower()}"])  # fmt: skip
        train(cfg, progress=False)
        rows = [json.loads(x) for x in (tmp_path / f"e{explicit}" / "metrics.jsonl").open()]
        losses.append([r["loss"] for r in rows if r.get("kind") == "train"])
    assert len(losses[0]) == 6 and len(calls) >= 6  # the second run's steps wrote them out
    for a, b in zip(*losses, strict=True):
        assert b == pytest.approx(a, rel=1e-4)


def test_under_bf16_autocast_forces_agree_to_its_precision() -> None:
    """The network in bf16 (autocast), geometry and sums in float32: both ways of taking the
    derivative round alike, to bf16's few parts in a thousand per operation."""
    model = _model(2).float()
    g = graph(periodic(3), molecular())
    g = g.__class__(
        **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = predict(model, g, stress=True, create_graph=True)
        written = predict(model, g, stress=True, explicit=True)
    for key in ("energy_net", "forces", "stress"):
        assert written[key].dtype == torch.float32
        scale = float(auto[key].detach().abs().max())
        torch.testing.assert_close(written[key], auto[key], rtol=0, atol=0.05 * scale)


def test_compiled_forces_equal_eager_ones_across_batch_sizes(monkeypatch) -> None:
    """``parallel.compile``'s forward pass (written-out forces, one graph, dynamic shapes):
    the same forces and training gradient as eager code, for batches of 2, 3 and 4
    structures without compiling again; without a C++ compiler it is refused in one line."""
    import copy

    import torch._dynamo

    from matscale.parallel.plan import compile_forward

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # another test's compilations are not this one's
    eager = _model(3).float()
    compiled = compile_forward(copy.deepcopy(eager))
    # 16 atoms each: inductor guards small matmuls on a range of atom counts around the first
    # batch's, which is not what this test is about
    batches = [(compressed(), periodic(1)), (periodic(2), molecular("CH4"), molecular("H2O")),
               (molecular("CH4", 1), molecular("CH4", 2), molecular("H2O", 1),
                molecular("H2O", 2))]  # fmt: skip
    for structures in batches:
        g = graph(*structures)
        g = g.__class__(
            **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
        )
        outs = []
        for model in (eager, compiled):
            model.zero_grad()
            out = predict(model, g, stress=True, explicit=True)
            _loss(out).backward()
            outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
        (a, grads_a), (b, grads_b) = outs
        torch.testing.assert_close(b["forces"], a["forces"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b["stress"], a["stress"], rtol=1e-4, atol=1e-5)
        for name, grad in grads_a.items():
            torch.testing.assert_close(grads_b[name], grad, rtol=1e-3, atol=1e-4, msg=name)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # 2, 3, 4 structures
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="needs a compiler"):
        check_forces_settings(
            ParallelConfig(explicit_forces=True, compile=True), eager, conservative=True
        )
