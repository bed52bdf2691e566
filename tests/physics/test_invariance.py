"""Energy is invariant, forces equivariant, under rotation, translation and permutation."""

import numpy as np
import torch

from matscale.models.physics import predict
from tests.physics.structures import graph, molecular, periodic, random_rotation


def _transformed(s, rotation=None, translation=None, perm=None):
    s = type(s)(**s.__dict__)
    if rotation is not None:
        s.positions = s.positions @ rotation.T
        s.cell = s.cell @ rotation.T
    if translation is not None:
        s.positions = s.positions + translation
    if perm is not None:
        s.positions, s.numbers = s.positions[perm], s.numbers[perm]
    return s


def test_rotation_and_translation(model) -> None:
    for s in (periodic(), molecular()):
        rot = random_rotation(1)
        ref = predict(model, graph(s))
        moved = predict(model, graph(_transformed(s, rot, np.array([0.3, -1.2, 2.0]))))
        torch.testing.assert_close(moved["energy"], ref["energy"], rtol=0, atol=1e-9)
        torch.testing.assert_close(
            moved["forces"], ref["forces"] @ torch.from_numpy(rot).T, rtol=0, atol=1e-9
        )


def test_permutation(model) -> None:
    s = molecular()
    perm = np.random.default_rng(3).permutation(s.n_atoms)
    ref = predict(model, graph(s))
    out = predict(model, graph(_transformed(s, perm=perm)))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-9)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=0, atol=1e-9)


def test_batch_equals_each_alone(model) -> None:
    parts = [periodic(0), molecular(), periodic(1), molecular("H2O")]
    together = predict(model, graph(*parts))
    alone = [predict(model, graph(p)) for p in parts]
    torch.testing.assert_close(together["energy"], torch.cat([a["energy"] for a in alone]))
    torch.testing.assert_close(together["forces"], torch.cat([a["forces"] for a in alone]))


def test_supercell_is_extensive(model) -> None:
    s = periodic()
    big = type(s)(**s.__dict__)
    shifts = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])
    big.positions = (s.positions[None] + (shifts @ s.cell)[:, None]).reshape(-1, 3)
    big.numbers = np.tile(s.numbers, 8)
    big.cell = 2 * s.cell
    small, large = predict(model, graph(s)), predict(model, graph(big))
    torch.testing.assert_close(large["energy"], 8 * small["energy"], rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(large["forces"], small["forces"].repeat(8, 1), atol=1e-9, rtol=0)
