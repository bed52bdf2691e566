import numpy as np
import pytest

from matscale.data.split import family_holdout, nested_fraction, split_indices


def test_split_is_disjoint_complete_and_seeded() -> None:
    train, val, test = split_indices(1000, (0.9, 0.05, 0.05), seed=3)
    assert len(train) == 900 and len(val) == 50 and len(test) == 50
    assert len(np.unique(np.concatenate([train, val, test]))) == 1000
    again = split_indices(1000, (0.9, 0.05, 0.05), seed=3)
    assert all((a == b).all() for a, b in zip(again, (train, val, test), strict=True))
    assert not (split_indices(1000, seed=4)[1] == val).all()
    with pytest.raises(ValueError):
        split_indices(10, (0.8, 0.3))


def test_fractions_are_nested() -> None:
    idx = np.arange(100, 1100)
    small, big = nested_fraction(idx, 0.1), nested_fraction(idx, 0.4)
    assert len(small) == 100 and len(big) == 400
    assert set(small) <= set(big) <= set(idx)


def test_family_holdout() -> None:
    fam = np.array([0, 1, 2, 1, 0, 2])
    rest, held = family_holdout(fam, ["bulk", "surface", "md"], ["surface"])
    assert held.tolist() == [1, 3] and rest.tolist() == [0, 2, 4, 5]
    with pytest.raises(ValueError, match="unknown families"):
        family_holdout(fam, ["bulk"], ["slab"])
