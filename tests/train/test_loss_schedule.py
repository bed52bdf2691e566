import math

import pytest
import torch

from matscale.data.batch import collate, graph_sample
from matscale.train.loss import error, error_sums, loss
from matscale.train.schedule import Plateau, lr_at
from tests.conftest import emt_structures, molecules


def _batch():
    structures = emt_structures(2) + molecules(2)
    structures[3].forces = None  # one structure without forces
    return collate([graph_sample(s, 4.0, source=int(s.source == "mol")) for s in structures])


def test_loss_masks_missing_labels_and_weights_targets() -> None:
    g = _batch()
    pred = {"energy": g.energy + 0.1 * g.n_atoms, "forces": g.forces + 0.2}
    pred["forces"][g.batch == 3] += 100.0  # unlabelled: must not count
    value, parts = loss(pred, g, weights={"energy": 1.0, "forces": 2.0})
    assert parts["energy"] == pytest.approx(0.1, rel=1e-6)
    assert parts["forces"] == pytest.approx(0.2, rel=1e-5)
    assert float(value) == pytest.approx(0.1 + 2 * 0.2, rel=1e-5)


def test_force_magnitude_weighting_counts_large_forces_more() -> None:
    g = _batch()
    labelled = g.has_forces[g.batch]
    size = torch.linalg.vector_norm(g.forces, dim=-1)
    big = labelled & (size > size[labelled].median())
    # the same error everywhere: the weighted mean equals it (the term keeps its scale)
    pred = {"energy": g.energy.clone(), "forces": g.forces + 0.2}
    kw = {"weights": {"forces": 1.0}, "force_weighting": "magnitude"}
    assert loss(pred, g, **kw)[1]["forces"] == pytest.approx(0.2, rel=1e-5)
    # errors only on the large-force atoms count more than under uniform weights
    pred["forces"] = g.forces + 0.2 * big.unsqueeze(-1)
    weighted = loss(pred, g, **kw)[1]["forces"]
    uniform = loss(pred, g, weights={"forces": 1.0})[1]["forces"]
    assert weighted > 1.2 * uniform
    w = 1 + size[labelled] / size[labelled].mean()
    assert weighted == pytest.approx(float(0.2 * w[big[labelled]].sum() / w.sum()), rel=1e-5)


def test_forces_may_have_their_own_error_function() -> None:
    g = _batch()
    pred = {"energy": g.energy + 0.1 * g.n_atoms, "forces": g.forces + 0.2}
    _, parts = loss(pred, g, weights={"energy": 1.0, "forces": 1.0}, force_kind="mse")
    assert parts["energy"] == pytest.approx(0.1, rel=1e-6)  # the MAE of energies
    assert parts["forces"] == pytest.approx(0.04, rel=1e-5)  # the MSE of forces


def test_error_kinds() -> None:
    r = torch.tensor([-2.0, 0.005, 1.0])
    assert error(r, "mae", 0.01).tolist() == pytest.approx([2.0, 0.005, 1.0])
    assert error(r, "mse", 0.01).tolist() == pytest.approx([4.0, 2.5e-5, 1.0])
    h = error(r, "huber", 0.01)
    assert float(h[1]) == pytest.approx(0.5 * 0.005**2) and float(h[0]) == pytest.approx(
        0.01 * (2.0 - 0.005)
    )


def test_error_sums_per_source() -> None:
    g = _batch()
    pred = {"energy": g.energy + 0.3 * g.n_atoms, "forces": g.forces - 0.1}
    sums = error_sums(pred, g, 2)
    assert sums["energy"][:, 1].tolist() == [2, 2]
    assert sums["energy"][:, 0].tolist() == pytest.approx([0.6, 0.6])
    n_mol0 = int((g.batch == 2).sum())
    assert sums["forces"][1, 1] == 3 * n_mol0  # the second molecule has no forces


def test_lr_schedule_is_a_pure_function() -> None:
    kw = {"lr": 1.0, "steps": 100, "warmup": 10, "min_ratio": 0.1}
    assert lr_at(0, kind="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, kind="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(55, kind="cosine", **kw) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2))
    )
    assert lr_at(100, kind="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(80, kind="constant", **kw) == 1.0
    # a time budget that runs out first takes over the decay; one that lags changes nothing
    assert lr_at(20, kind="cosine", time_fraction=1.0, **kw) == pytest.approx(0.1)
    assert lr_at(55, kind="cosine", time_fraction=0.2, **kw) == lr_at(55, kind="cosine", **kw)
    assert lr_at(5, kind="cosine", time_fraction=1.0, **kw) == pytest.approx(0.6)  # warm-up


def test_plateau_halves_after_patience() -> None:
    p = Plateau(patience=2, floor=0.2)
    for metric in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]:
        p.update(metric)
    assert p.scale == 0.25 and p.best == 0.9
    for _ in range(20):
        p.update(1.0)
    assert p.scale == 0.2  # floor


def test_the_ema_forgets_the_untrained_start() -> None:
    # at a constant 0.99 from the first step, 0.99**200 = 13 % of the initial weights were
    # still in the EMA after 200 steps: a short run reported and exported mostly its start
    import copy

    from matscale.train.step import ema_decay_at, ema_update

    start = torch.nn.Linear(4, 4)
    model, ema = copy.deepcopy(start), copy.deepcopy(start)
    with torch.no_grad():
        model.weight.add_(1.0)  # the trained weights, one unit away from the start
    for step in range(1, 201):
        ema_update(ema, model, ema_decay_at(0.99, step))
    assert (model.weight - ema.weight).abs().max() < 1e-3
    assert ema_decay_at(0.99, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.99, 890) == pytest.approx(0.99) == ema_decay_at(0.99, 10**6)
    assert ema_decay_at(0.5, 100) == 0.5  # never above the decay asked for
