import itertools

import numpy as np
import pytest

import matscale.data.graph as graph_module
from matscale.data.graph import MAX_EXTENT_A, count_edges, radius_graph, wrap_positions
from matscale.errors import DataError


def brute_force(pos, cell, pbc, cutoff):
    """Every (i, j, S) with |x_j - x_i + S cell| < cutoff, by enumerating images."""
    reach = [int(np.ceil(cutoff / min(np.linalg.norm(cell, axis=1)))) + 2 if p else 0 for p in pbc]
    out = set()
    for shift in itertools.product(*[range(-r, r + 1) for r in reach]):
        s = np.array(shift)
        for i in range(len(pos)):
            for j in range(len(pos)):
                if i == j and not s.any():
                    continue
                if np.linalg.norm(pos[j] - pos[i] + s @ cell) < cutoff:
                    out.add((i, j, *shift))
    return out


CASES = [
    (True, True, True),
    (False, False, False),
    (True, True, False),
    (True, False, False),
]


@pytest.mark.parametrize("pbc", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force(pbc, seed) -> None:
    rng = np.random.default_rng(seed)
    cell = np.diag([3.0, 3.5, 4.0]) + rng.normal(0, 0.4, (3, 3))  # triclinic
    pos = rng.random((6, 3)) @ cell
    edges, shifts = radius_graph(pos, cell, np.array(pbc), 4.5)
    got = {(i, j, *s) for i, j, s in zip(edges[0], edges[1], shifts, strict=True)}
    assert got == brute_force(pos, cell, pbc, 4.5)
    assert count_edges(pos, cell, np.array(pbc), 4.5) == len(got)


def test_tiny_cell_sees_its_own_images() -> None:
    cell = np.eye(3) * 1.5
    edges, shifts = radius_graph(np.zeros((1, 3)), cell, np.ones(3, bool), 3.1)
    assert len(edges[0]) == len(brute_force(np.zeros((1, 3)), cell, (True,) * 3, 3.1))
    assert (edges == 0).all() and (np.abs(shifts).sum(1) > 0).all()
    vec = shifts @ cell
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1).max(), 3.0, atol=1e-9)


def test_vectors_and_full_list_symmetry() -> None:
    rng = np.random.default_rng(3)
    cell = np.eye(3) * 4.0
    pos = rng.random((8, 3)) * 4
    (i, j), s = radius_graph(pos, cell, np.ones(3, bool), 3.0)
    pairs = {(a, b, *c) for a, b, c in zip(i, j, s, strict=True)}
    assert all((b, a, *(-np.array(c))) in pairs for a, b, *c in pairs)
    d = np.linalg.norm(pos[j] - pos[i] + s @ cell, axis=1)
    assert d.max() < 3.0


def test_max_neighbours_keeps_the_nearest() -> None:
    rng = np.random.default_rng(4)
    pos = rng.random((30, 3)) * 6
    (i, j), _ = radius_graph(pos, np.zeros((3, 3)), np.zeros(3, bool), 5.0)
    (ik, jk), _ = radius_graph(pos, np.zeros((3, 3)), np.zeros(3, bool), 5.0, max_neighbours=4)
    assert np.bincount(ik).max() == 4
    for centre in range(30):
        d_all = np.sort(np.linalg.norm(pos[j[i == centre]] - pos[centre], axis=1))
        d_kept = np.sort(np.linalg.norm(pos[jk[ik == centre]] - pos[centre], axis=1))
        np.testing.assert_allclose(d_kept, d_all[: len(d_kept)])


def test_deterministic_order() -> None:
    rng = np.random.default_rng(5)
    cell = np.eye(3) * 5
    pos = rng.random((20, 3)) * 5
    a = radius_graph(pos, cell, np.ones(3, bool), 4.0)
    b = radius_graph(pos, cell, np.ones(3, bool), 4.0)
    np.testing.assert_array_equal(a[0], b[0])
    assert (np.diff(a[0][0]) >= 0).all()  # sorted by centre


def test_one_thread_and_every_core_find_the_same_graph(monkeypatch) -> None:
    """Small structures are searched on one thread, large ones on every core: the same edges,
    shifts and edge counts either way, each sorted by centre."""
    rng = np.random.default_rng(6)
    cell = np.eye(3) * 14.0 + rng.normal(0, 0.3, (3, 3))
    pos = rng.random((300, 3)) @ cell
    pbc = np.array([True, True, False])
    graphs = []
    for threaded_from in (10**9, 0):  # one thread, then vesin's threads
        monkeypatch.setattr(graph_module, "THREADED_FROM_ATOMS", threaded_from)
        (i, j), s = radius_graph(pos, cell, pbc, 5.0)
        assert (np.diff(i) >= 0).all()
        graphs.append({(a, b, *c) for a, b, c in zip(i, j, s, strict=True)})
        assert count_edges(pos, cell, pbc, 5.0) == len(i)
    assert graphs[0] == graphs[1] and len(graphs[0]) > 10_000


def test_atoms_spread_past_the_limit_are_refused_not_a_crash() -> None:
    far = np.array([[0.0, 0.0, 0.0], [2 * MAX_EXTENT_A, 0.0, 0.0]])
    with pytest.raises(DataError, match=r"an atom lies 2e\+05 Å from the origin along x"):
        radius_graph(far, np.zeros((3, 3)), np.zeros(3, bool), 5.0)


def test_wrap_positions_moves_atoms_by_whole_lattice_vectors_along_periodic_axes() -> None:
    rng = np.random.default_rng(0)
    cell = np.array([[4.0, 0.0, 0.0], [1.0, 3.5, 0.0], [0.5, 0.7, 5.0]])
    inside = rng.uniform(0, 1, (20, 3)) @ cell
    whole = rng.integers(-3000, 3000, (20, 3))
    far = inside + whole @ cell
    wrapped = wrap_positions(far, cell, np.array([True, True, True]))
    np.testing.assert_allclose(wrapped, inside, atol=1e-9)
    # a slab: only x and y wrap, and the open z vector's row (singular with the others here,
    # as a user may leave it) is ignored
    slab_cell = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 2.0, 0.0]])
    pbc = np.array([True, True, False])
    p = np.array([[7.0, -3.0, 40.0], [0.5, 0.5, -9.0]])
    np.testing.assert_allclose(
        wrap_positions(p, slab_cell, pbc), [[1.0, 1.0, 40.0], [0.5, 0.5, -9.0]]
    )
    # one periodic axis along x + y: the atom moves along that vector only
    wire = wrap_positions(np.array([[5.0, 5.0, 1.0]]), slab_cell, np.array([False, False, True]))
    np.testing.assert_allclose(wire, [[1.0, 1.0, 1.0]])
    # nothing periodic, or a degenerate periodic cell (refused elsewhere, by name): unchanged
    np.testing.assert_array_equal(wrap_positions(far, cell, np.zeros(3, bool)), far)
    np.testing.assert_array_equal(wrap_positions(far, np.zeros((3, 3)), pbc), far)


def test_model_positions_centre_structures_with_an_open_direction() -> None:
    """Wrapped along periodic axes as wrap_positions does; with any open axis the whole
    structure is moved so that its centroid is at the origin (a translation: distances and
    the cell shifts between wrapped atoms are unchanged); fully periodic cells are only
    wrapped."""
    from matscale.data.graph import model_positions

    far = np.array([[9e4, 1.0, 2.0], [9e4 + 2.5, 1.0, 2.0], [9e4, 3.5, 2.0]])
    centred = model_positions(far, np.zeros((3, 3)), np.zeros(3, bool))
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(centred - centred[0], far - far[0], atol=1e-9)
    cell, bulk_pbc = np.diag([3.0, 3.0, 3.0]), np.ones(3, bool)
    np.testing.assert_array_equal(
        model_positions(far, cell, bulk_pbc), wrap_positions(far, cell, bulk_pbc)
    )
    slab = np.array([True, True, False])
    moved = model_positions(far, cell, slab)
    wrapped = wrap_positions(far, cell, slab)
    np.testing.assert_allclose(moved, wrapped - wrapped.mean(axis=0))
    assert np.abs(moved).max() < 3.0
