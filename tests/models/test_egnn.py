import copy
import itertools

import pytest
import torch

from matscale.models.egnn import EGNN, EGNNConfig, set_statistics
from matscale.models.physics import predict
from tests.physics.structures import graph, molecular, periodic


def _float(g):
    return g.__class__(
        **{k: (v.float() if v.dtype == torch.float64 else v) for k, v in g.__dict__.items()}
    )


def test_factored_and_plain_first_layer_agree() -> None:
    torch.manual_seed(0)
    fact = EGNN(EGNNConfig(width=24, heads=("a", "b"), factored=True)).double()
    plain = copy.deepcopy(fact)
    for layer in plain.layers:
        layer.edge.factored = False
    g = graph(periodic(), molecular())
    a, b = predict(fact, g), predict(plain, g)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=1e-10, atol=1e-12)


def test_each_source_uses_its_own_head_and_references() -> None:
    torch.manual_seed(1)
    model = EGNN(EGNNConfig(width=16, heads=("a", "b"))).double()
    s = molecular()
    as_a, as_b = graph(s), graph(s)
    as_a.source.fill_(0)
    as_b.source.fill_(1)
    ea, eb = model(as_a)["energy"], model(as_b)["energy"]
    assert not torch.allclose(ea, eb)  # different heads
    with torch.no_grad():
        model.readout.heads[1].load_state_dict(model.readout.heads[0].state_dict())
        model.reference_energy[1, 6] = 100.0  # carbon, source b only
    n_carbon = int((as_b.numbers == 6).sum())
    torch.testing.assert_close(
        model(as_b)["energy"] - model(as_a)["energy"],
        torch.tensor([100.0 * n_carbon], dtype=torch.float64),
    )


def test_statistics_fill_the_buffers() -> None:
    model = EGNN(EGNNConfig(width=8, heads=("emt", "xtb")))
    stats = {
        "xtb": {
            "reference_energy_eV": {"1": -13.6, "6": -57.0},
            "energy_residual_rms_eV": 2.0,
            "mean_atoms": 8.0,
            "force_rms_eV_per_A": 2.5,
        },
    }
    set_statistics(model, stats)
    assert model.reference_energy[1, 6] == -57.0 and model.reference_energy[0].abs().sum() == 0
    assert model.energy_scale.tolist() == [1.0, 2.5] and model.force_scale.tolist() == [1.0, 2.5]
    set_statistics(model, {"emt": {"energy_residual_rms_eV": 2.0, "mean_atoms": 8.0}})
    assert model.energy_scale.tolist() == [0.25, 2.5]  # no forces: the energy residual


def test_large_reference_energies_keep_float64_precision() -> None:
    model = EGNN(EGNNConfig(width=8))
    with torch.no_grad():
        model.reference_energy[0, :] = -1.0e5  # ANI-scale totals (eV)
    g = _float(graph(molecular()))
    g.source.zero_()  # one head
    out = model(g)
    net = out["energy_net"].double()  # summed in float64, returned in float32
    expected = net - 1.0e5 * len(g.numbers)
    assert out["energy"].dtype == torch.float64
    assert float((out["energy"] - expected).detach().abs()) < 1e-6
    # the per-atom energies sum to the energy to float64's round-off, not float32's
    assert float((out["node_energy"].sum() - out["energy"]).detach().abs()) < 1e-9


def _rms(model: EGNN, g) -> tuple[list[float], float]:
    """RMS of node features after each layer, and of the embedding's gradient."""
    feats: list[float] = []
    hooks = [
        layer.register_forward_hook(
            lambda m, i, o: feats.append(float(o[0].detach().pow(2).mean().sqrt()))
        )
        for layer in model.layers
    ]
    out = predict(model, g, create_graph=True)
    (out["energy_net"].sum() + out["forces"].pow(2).sum()).backward()
    for h in hooks:
        h.remove()
    grads = [
        p.grad.pow(2).mean().sqrt() for p in model.layers[0].parameters() if p.grad is not None
    ]
    return feats, float(torch.stack(grads).mean())


def test_activations_stay_order_one_across_widths() -> None:
    """Node features keep an RMS of order one at every layer and every width (unit-variance
    initialisation); see benchmarks/init_scale.py for widths up to 4096."""
    g = _float(graph(periodic(), molecular()))
    g.source.zero_()  # one head
    for width, residual in itertools.product((32, 512), (False, True)):
        torch.manual_seed(0)
        feats, _ = _rms(EGNN(EGNNConfig(width=width, depth=4, residual=residual)), g)
        assert all(0.5 < f < 2.0 for f in feats), (width, residual, feats)


@pytest.mark.parametrize(
    ("field", "value"),
    [("activation", "swish"), ("norm", "batch"), ("force_head", "both"), ("width", 0)],
)
def test_config_validation(field, value) -> None:
    with pytest.raises(ValueError, match=field if field != "width" else "positive"):
        EGNNConfig(**{field: value})


def test_predict_works_under_no_grad_and_for_a_lone_atom() -> None:
    from matscale.data.structure import Structure

    model = EGNN(EGNNConfig(width=8, heads=("a", "b"))).double()
    g = graph(periodic())
    with torch.no_grad():
        out = predict(model, g, stress=True)
    assert out["forces"].shape == (8, 3) and torch.isfinite(out["stress"]).all()
    import numpy as np

    lone = graph(Structure(numbers=np.array([29]), positions=np.zeros((1, 3)), source="a"))
    assert lone.edge_index.shape[1] == 0
    out = predict(model, lone)
    assert out["forces"].abs().max() == 0 and torch.isfinite(out["energy"]).all()


def test_reference_energies_stay_float64_through_dtype_casts() -> None:
    model = EGNN(EGNNConfig(width=8))
    with torch.no_grad():
        model.reference_energy[0, 1] = -12345.6789
    model = model.bfloat16().float()
    assert model.embedding.weight.dtype == torch.float32
    assert model.reference_energy.dtype == torch.float64
    assert float(model.reference_energy[0, 1]) == -12345.6789


def test_models_and_config_import_without_ase_or_vesin() -> None:
    import subprocess
    import sys

    code = (
        "import sys, matscale.models.egnn, matscale.models.physics, matscale.config;"
        "print(sorted(m for m in ('ase', 'vesin') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
