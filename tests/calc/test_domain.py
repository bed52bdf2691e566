"""Domain decomposition: slabs with ghosts as deep as the receptive field give the results of
the whole structure (energy, atomic energies, forces, stress), on one process summing every
rank's share and on two processes communicating through gloo."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron

from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.calc.domain import decompose, domain_terms, halo, unpack
from matscale.calc.inference import as_structure
from matscale.calc.model_file import load_potential
from matscale.parallel.launch import free_port, local_command


def _alloy(repeat: tuple[int, int, int], seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    atoms.numbers[rng.random(len(atoms)) < 0.3] = 79  # Au
    atoms.rattle(0.08, seed=seed)
    atoms.positions += rng.normal(size=3) * 5  # atoms outside the cell: wrapped, not lost
    return atoms


def _structures() -> dict[str, Atoms]:
    periodic = _alloy((2, 2, 7), 1)
    sheared = _alloy((2, 3, 6), 2)
    shear = np.array([[0, 0, 0], [1.2, 0, 0], [0.8, -0.6, 0]])
    sheared.set_cell(sheared.cell[:] + shear, scale_atoms=True)
    slab = _alloy((2, 2, 6), 3)
    slab.pbc = (True, True, False)
    slab.center(vacuum=4.0, axis=2)
    cluster = Icosahedron("Cu", 4)
    cluster.rattle(0.05, seed=4)
    return {"periodic": periodic, "sheared": sheared, "slab": slab, "cluster": cluster}


def _whole(model: Path, atoms: Atoms) -> dict[str, np.ndarray]:
    atoms = atoms.copy()
    atoms.calc = MatscaleCalculator.from_file(model, head="emt")
    out = {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
    }
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def _assert_same(got: dict, want: dict) -> None:
    # float32 round-off; a halo one cutoff short (half the receptive field of this 2-layer
    # model) is off by 1.4e-4 eV, 7e-5 eV/Å and 2.7e-6 eV/Å³ on the periodic alloy
    assert got["energy"] == pytest.approx(want["energy"], abs=5e-5)
    np.testing.assert_allclose(got["energies"], want["energies"], atol=1e-5)
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-5)
    if "stress" in want:
        np.testing.assert_allclose(got["stress"], want["stress"], atol=2e-7)


@pytest.mark.parametrize("name", ["periodic", "sheared", "slab", "cluster", "vacuum"])
def test_every_atom_is_owned_once_and_every_neighbour_within_the_halo_is_there(
    tiny_model: Path, name: str
) -> None:
    from ase.geometry import complete_cell
    from ase.neighborlist import neighbor_list

    atoms = _structures()[name] if name != "vacuum" else _vacuum_slab()
    s = as_structure(atoms)
    reach = halo(load_potential(tiny_model))
    i_all, j_all, d_all = neighbor_list("ijD", atoms, reach - 0.01)
    owners = np.zeros(len(atoms), dtype=int)
    for rank in range(3):
        d = decompose(s, rank, 3, reach)
        owners[d.index[d.owned]] += 1
        local = d.structure.positions
        cell = complete_cell(d.structure.cell)
        for k in np.flatnonzero(d.owned):  # each owned atom's whole neighbourhood
            i = d.index[k]
            for j, vec in zip(j_all[i_all == i], d_all[i_all == i], strict=True):
                # an image of j at the neighbour's place: exactly, or up to a lattice vector
                # along the directions the local structure is still periodic in
                frac = np.linalg.solve(cell.T, (local[k] + vec - local[d.index == j]).T).T
                whole = np.abs(frac - np.rint(frac)) < 1e-6
                fits = np.where(d.structure.pbc, whole, np.abs(frac) < 1e-6).all(axis=1)
                assert fits.any(), (name, rank, i, j)
        assert 1 <= d.n_owned <= len(atoms) // 3 + 1  # equal atom counts
    assert (owners == 1).all()


def _vacuum_slab() -> Atoms:
    """A slab periodic in all three directions with 20 Å of vacuum along z."""
    slab = _alloy((3, 3, 2), 5)
    slab.center(vacuum=10.0, axis=2)
    return slab


def test_a_periodic_slab_is_not_cut_along_its_vacuum_and_odd_inputs_work(
    tiny_model: Path,
) -> None:
    potential = load_potential(tiny_model)
    slab = _vacuum_slab()
    assert decompose(as_structure(slab), 0, 2, halo(potential)).axis != 2
    # more processes than atoms: the extra ones own nothing and add nothing
    pair = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    flats = [domain_terms(potential, as_structure(pair), r, 4, head="emt") for r in range(4)]
    assert sum(float(f.abs().sum()) == 0 for f in flats) == 2
    _assert_same(unpack(sum(flats), 2, stress=False), _whole(tiny_model, pair))
    # a 2D-periodic cell whose third vector is zero (ASE allows it)
    flat = _alloy((3, 3, 1), 6)
    flat.cell[2] = 0.0
    flat.pbc = (True, True, False)
    got = unpack(sum(domain_terms(potential, as_structure(flat), r, 2, head="emt")
                     for r in range(2)), len(flat), stress=False)  # fmt: skip
    _assert_same(got, _whole(tiny_model, flat))


@pytest.mark.parametrize("name", ["periodic", "sheared", "slab", "cluster"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_ranks_shares_sum_to_the_whole_structure(
    tiny_model: Path, name: str, world: int
) -> None:
    atoms = _structures()[name]
    potential = load_potential(tiny_model)
    stress = bool(atoms.pbc.all())
    flat = sum(
        domain_terms(potential, as_structure(atoms), r, world, head="emt", stress=stress)
        for r in range(world)
    )
    _assert_same(unpack(flat, len(atoms), stress=stress), _whole(tiny_model, atoms))


def _rank(rank: int, world: int, port: int, model: str, queue: mp.Queue) -> None:
    import torch.distributed as dist

    from matscale.calc.domain import predict_domain

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        potential = load_potential(model)
        for name in ("periodic", "cluster"):
            atoms = _structures()[name]
            out = predict_domain(potential, atoms, head="emt", stress=bool(atoms.pbc.all()))
            queue.put((rank, name, out))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_whole_structure_through_gloo(tiny_model: Path) -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(tiny_model), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in range(4)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    structures = _structures()
    for _, name, out in results:
        _assert_same(out, _whole(tiny_model, structures[name]))
    assert {(r, n) for r, n, _ in results} == {
        (r, n) for r in (0, 1) for n in ("periodic", "cluster")
    }


def test_md_over_two_processes_follows_the_single_process_trajectory(
    tiny_model: Path, tmp_path: Path
) -> None:
    import subprocess

    import ase.io

    ase.io.write(tmp_path / "alloy.xyz", _structures()["periodic"])
    common = [str(tiny_model), str(tmp_path / "alloy.xyz"), "--head", "emt", "--ensemble", "nve",
              "--steps", "10", "--log-every", "5", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun takes --log for an abbreviation of its own --log-dir: --log-file is md's name
    # for it under torchrun (each run in its own folder)
    common += ["--log-file", "md.log"]
    two = local_command(["-m", "matscale", "md", *common, "--domains"], processes=2)
    one = local_command(["-m", "matscale", "md", *common])
    for name, cmd in (("two", two), ("one", one)):
        (tmp_path / name).mkdir()
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path / name
        )
        assert result.returncode == 0, result.stderr[-3000:]
        if name == "two":  # rank 0 alone prints and writes
            assert result.stdout.count("total energy drift") == 1
    rows = [np.loadtxt(tmp_path / n / "md.log") for n in ("two", "one")]
    assert rows[0].shape == rows[1].shape == (3, rows[0].shape[1])
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-4, rtol=1e-6)
    final = [ase.io.read(tmp_path / n / "md.traj", index=-1) for n in ("two", "one")]
    np.testing.assert_allclose(final[0].positions, final[1].positions, atol=1e-6)
