from pathlib import Path

import ase.io
import numpy as np
import torch

from matscale.data.batch import GraphDataset, collate, graph_sample, make_loader
from matscale.data.pack import PackConfig, pack
from matscale.data.sampler import BatchSampler, SamplerConfig
from matscale.data.store import Store
from matscale.data.transform import GraphSettings
from tests.conftest import emt_structures, molecules


def test_collate_offsets_and_edge_vectors(structures) -> None:
    samples = [graph_sample(s, 4.0, source=k % 2) for k, s in enumerate(structures[20:30])]
    g = collate(samples)
    assert g.num_graphs == 10
    assert int(g.n_atoms.sum()) == len(g.numbers) == len(g.batch)
    i, j = g.edge_index
    assert (g.batch[i] == g.batch[j]).all()  # no edge crosses structures
    d = g.edge_vectors().norm(dim=1)
    assert float(d.max()) < 4.0 and float(d.min()) > 0.5
    # the same distances as each structure alone
    alone = torch.cat([collate([s]).edge_vectors().norm(dim=1) for s in samples])
    torch.testing.assert_close(d, alone)
    assert g.positions.dtype == torch.float32 and g.energy.dtype == torch.float64


def test_missing_labels_are_masked() -> None:
    s = molecules(1)[0]
    s.forces = None
    g = collate([graph_sample(s, 4.0)])
    assert not g.has_forces.any() and g.has_energy.all() and not g.has_stress.any()
    assert (g.forces == 0).all()


def test_edge_vectors_are_differentiable_in_positions_and_cell() -> None:
    g = collate([graph_sample(emt_structures(1)[0], 4.0)])
    g.positions.requires_grad_(True)
    g.cell.requires_grad_(True)
    g.edge_vectors().norm(dim=1).sum().backward()
    assert g.positions.grad is not None and g.cell.grad is not None


def test_loader_with_workers_matches_single_process(tmp_path: Path, structures) -> None:
    path = tmp_path / "a.extxyz"
    ase.io.write(path, [s.to_atoms() for s in structures])
    pack([path], tmp_path / "st", PackConfig(workers=1), progress=False)
    store = Store(tmp_path / "st")
    sampler = BatchSampler(
        n_atoms=store.n_atoms,
        n_edges=store.n_edges,
        source_ids=store.source_ids,
        sources=store.sources,
        indices=np.arange(len(store)),
        config=SamplerConfig(max_atoms=40),
    )
    ds = GraphDataset(store, _settings(store, store.sources))
    serial = list(make_loader(ds, sampler, workers=0))
    parallel = list(make_loader(ds, sampler, workers=2))
    assert len(serial) == len(parallel) == len(sampler)
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a.edge_index, b.edge_index)
        torch.testing.assert_close(a.forces, b.forces)
        torch.testing.assert_close(a.index, b.index)
    seen = torch.cat([b.index for b in serial]).tolist()
    assert sorted(seen) == list(range(len(store)))
    assert serial[0].source.tolist() == [
        store.sources.index(store[i].source) for i in serial[0].index.tolist()
    ]


def test_sources_are_matched_to_heads_by_name(tmp_path: Path, structures) -> None:
    import pytest

    from matscale.errors import DataError

    path = tmp_path / "a.extxyz"
    ase.io.write(path, [s.to_atoms() for s in structures])
    pack([path], tmp_path / "st", PackConfig(workers=1), progress=False)
    store = Store(tmp_path / "st")  # sources ["emt", "mol"]
    ds = GraphDataset(store, _settings(store, ("mol", "other", "emt")))
    assert ds[0]["source"].tolist() == [2] and ds[len(store) - 1]["source"].tolist() == [0]
    with pytest.raises(DataError, match=r"no readout head for sources \['mol'\]"):
        GraphDataset(store, _settings(store, ("emt",)))


def _settings(store: Store, heads) -> GraphSettings:
    return GraphSettings.from_stats(
        cutoff=4.0, max_neighbours=None, heads=tuple(heads), stats=store.stats
    )


def test_settings_carry_the_shortest_distances_through_the_model_file(tmp_path: Path) -> None:
    structures = emt_structures(6) + molecules(6)
    path = tmp_path / "in.extxyz"
    ase.io.write(path, [s.to_atoms() for s in structures])
    pack([path], tmp_path / "st", PackConfig(workers=1), progress=False)
    store = Store(tmp_path / "st")
    settings = _settings(store, ("emt", "mol"))
    assert len(settings.shortest) == 2
    cc = {(a, b): d for a, b, d in settings.shortest[1]}[(6, 6)]
    assert cc == store.stats["mol"]["shortest_distance_A"]["6-6"] and 1.1 < cc < 1.6
    assert GraphSettings.from_dict(settings.to_dict()) == settings
    # every structure of the store itself (float32 positions, floors rounded down) passes the
    # check without a warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in range(len(store)):
            s = store[k]
            settings.sample(s, settings.heads.index(s.source))
