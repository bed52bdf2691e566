import numpy as np
import pytest

from matscale.data.sampler import BatchSampler, SamplerConfig


def make(config: SamplerConfig, *, rank: int = 0, world: int = 1, seed: int = 0, n: int = 500):
    rng = np.random.default_rng(0)
    n_atoms = rng.integers(2, 60, size=n)
    return BatchSampler(
        n_atoms=n_atoms,
        n_edges=n_atoms * 20,
        source_ids=(np.arange(n) % 5 == 0).astype(int),
        sources=["big", "small"],
        indices=np.arange(0, n),
        config=config,
        seed=seed,
        rank=rank,
        world=world,
    )


def test_bounds_and_oversized_structures() -> None:
    s = make(SamplerConfig(max_atoms=100, max_edges=1500, max_structures=6))
    for batch in s:
        atoms = s.n_atoms[batch]  # indices == positions here
        if len(batch) > 1:
            assert atoms.sum() <= 100 and (atoms * 20).sum() <= 1500 and len(batch) <= 6
    lone = make(SamplerConfig(max_atoms=10))
    batches = list(lone)
    assert sum(len(b) for b in batches) == 500  # nothing dropped for being big
    for b in batches:
        if (lone.n_atoms[b] > 10).any():
            assert len(b) == 1  # a structure over the bound rides alone


def test_ranks_are_disjoint_and_equal_in_length() -> None:
    config = SamplerConfig(max_atoms=300)
    ranks = [make(config, rank=r, world=3) for r in range(3)]
    lengths = {len(r) for r in ranks}
    assert len(lengths) == 1
    seen = [np.concatenate(list(r)) for r in ranks]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(seen[a]) & set(seen[b])
    covered = sum(len(x) for x in seen)
    assert covered > 0.9 * 500  # only the tail beyond the shortest rank is cut


def test_deterministic_per_epoch_and_different_across_epochs() -> None:
    a, b = make(SamplerConfig(max_atoms=200)), make(SamplerConfig(max_atoms=200))
    first = [x.tolist() for x in a.batches(0)]
    assert first == [x.tolist() for x in b.batches(0)]
    assert first != [x.tolist() for x in a.batches(1)]
    assert first != [x.tolist() for x in make(SamplerConfig(max_atoms=200), seed=1).batches(0)]


def test_resume_from_a_position_sees_the_same_batches() -> None:
    s = make(SamplerConfig(max_atoms=200))
    s.set_epoch(2)
    full = [b.tolist() for b in s]
    resumed = make(SamplerConfig(max_atoms=200))
    resumed.set_epoch(2, start_batch=7)
    assert [b.tolist() for b in resumed] == full[7:]


def test_mixture_weights() -> None:
    s = make(SamplerConfig(max_atoms=10_000, mixture={"big": 1.0, "small": 1.0}))
    got = np.concatenate(s.batches(0))
    small = np.isin(got, np.arange(0, 500, 5)).mean()
    assert small == pytest.approx(0.5, abs=0.01)  # up-weighted from 20 % to half
    up = np.bincount(got[np.isin(got, np.arange(0, 500, 5))])
    assert up[up > 0].min() >= 2  # whole permutations repeated, no structure left out
    with pytest.raises(ValueError, match="unknown sources"):
        make(SamplerConfig(mixture={"nope": 1.0}))


def test_no_shuffle_keeps_order() -> None:
    s = make(SamplerConfig(max_atoms=100, shuffle=False))
    np.testing.assert_array_equal(np.concatenate(list(s)), np.arange(500))
