import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from matscale.data.generate import emt, xtb, xtb_main_group, xtb_solids
from matscale.data.generate.run import GenerateConfig, chunk_rng, generate
from matscale.data.readers import read_structures
from matscale.data.structure import check_structure


def test_emt_families_labels_and_reproducibility() -> None:
    a = emt.generate(40, chunk_rng(0, emt.SOURCE, 0), Counter())
    b = emt.generate(40, chunk_rng(0, emt.SOURCE, 0), Counter())
    assert len(a) == 40
    assert [s.energy for s in a] == [s.energy for s in b]
    families = {s.family for s in a}
    assert {"bulk", "surface", "cluster", "distorted"} <= families
    assert any(f.startswith("md-") for f in families)
    for s in a:
        check_structure(s, require=("energy", "forces"))
        assert set(s.numbers) <= {13, 28, 29, 46, 47, 78, 79}
        assert (s.stress is None) == (s.family in ("surface", "cluster"))  # none with vacuum
        assert s.pbc.any() == (s.family != "cluster")
        assert 6 <= s.n_atoms <= 60


def test_emt_distorted_cells_are_far_from_equilibrium_without_fused_atoms() -> None:
    out = emt.generate(200, chunk_rng(1, emt.SOURCE, 0), Counter())
    by_family = {f: [s for s in out if s.family == f] for f in ("bulk", "distorted")}
    mean_force = {f: np.mean([np.abs(s.forces).mean() for s in v]) for f, v in by_family.items()}
    assert mean_force["distorted"] > 2 * mean_force["bulk"]
    for s in by_family["distorted"]:
        atoms = s.to_atoms()
        nn = min(emt.LATTICE[x] for x in atoms.get_chemical_symbols()) / np.sqrt(2)
        d = atoms.get_all_distances(mic=True)[~np.eye(len(atoms), dtype=bool)]
        assert d.min() > 0.5 * nn


def test_xtb_molecules_are_organic_and_labelled() -> None:
    skipped: Counter[str] = Counter()
    out = xtb.generate(12, chunk_rng(0, xtb.SOURCE, 0), skipped)
    assert len(out) + skipped["scf"] == 12
    for s in out:
        check_structure(s, require=("energy", "forces"))
        assert set(s.numbers) <= xtb.ORGANIC and not s.pbc.any() and s.stress is None


def test_xtb_large_molecules_are_larger_than_g2_and_chemically_sound() -> None:
    from ase.collections import g2
    from ase.neighborlist import natural_cutoffs, neighbor_list

    largest_g2 = max(len(g2[name]) for name in xtb.MOLECULES)
    rng = chunk_rng(0, xtb.SOURCE, 1)
    for _ in range(20):
        atoms = xtb._chain(rng)
        assert len(atoms) > largest_g2
        # every atom has its valence of bonded neighbours (C 4, O 2, H and F 1), no clashes
        i = neighbor_list("i", atoms, natural_cutoffs(atoms, mult=1.1))
        valence = {"C": 4, "O": 2, "H": 1, "F": 1}
        counts = np.bincount(i, minlength=len(atoms))
        assert [valence[x] for x in atoms.get_chemical_symbols()] == counts.tolist()
    skipped: Counter[str] = Counter()
    labelled = [s for s in xtb.generate(40, chunk_rng(0, xtb.SOURCE, 2), skipped)]
    large = [s for s in labelled if s.family == "large"]
    assert large and all(s.n_atoms > largest_g2 for s in large)
    assert max(np.abs(s.forces).max() for s in large) < 5.0  # near equilibrium, eV/Å


def test_xtb_main_group_covers_si_p_s_cl_br_and_large_chains_are_held_out_by_size() -> None:
    from ase.neighborlist import natural_cutoffs, neighbor_list

    skipped: Counter[str] = Counter()
    out = xtb_main_group.generate(60, chunk_rng(0, xtb_main_group.SOURCE, 0), skipped)
    assert len(out) + skipped["scf"] == 60 and len(out) >= 55
    elements = set()
    for s in out:
        check_structure(s, require=("energy", "forces"))
        assert set(s.numbers) <= xtb_main_group.ELEMENTS and not s.pbc.any()
        assert s.source == xtb_main_group.SOURCE
        elements |= set(s.numbers)
    assert xtb_main_group.MAIN_GROUP <= elements  # Si, P, S, Cl and Br all appear
    families = Counter(s.family for s in out)
    assert {"rattled", "conformer", "dimer", "large"} <= set(families)
    # held out by size: the smallest large chain exceeds the largest possible training molecule
    rng = np.random.default_rng(3)
    low, high = xtb_main_group.CONFORMER_CARBONS[1], xtb_main_group.LARGE_CARBONS[0]
    groups = {g: 1.0 / 2 for g in ("OH", "SH")}  # as many extra hydrogens as possible
    largest_conformer = max(len(xtb.chain(rng, low, groups, conformer=True)) for _ in range(20))
    smallest_large = len(xtb.chain(rng, high, {}, conformer=True))
    assert smallest_large > largest_conformer and smallest_large > max(
        len(s.numbers) for s in out if s.family in ("rattled", "conformer")
    )
    # conformers keep every valence (C 4, O and S 2, H and halogens 1) and turn torsions
    valence = {"C": 4, "O": 2, "S": 2, "H": 1, "F": 1, "Cl": 1, "Br": 1}
    turned = 0
    for _ in range(20):
        atoms = xtb.chain(rng, 6, xtb_main_group.CHAIN_GROUPS, conformer=True)
        i = neighbor_list("i", atoms, natural_cutoffs(atoms, mult=1.1))
        counts = np.bincount(i, minlength=len(atoms))
        assert [valence[x] for x in atoms.get_chemical_symbols()] == counts.tolist()
        c = atoms.positions[:6]  # the backbone: all-trans lies in one plane
        centred = c - c.mean(0)
        turned += np.linalg.svd(centred, compute_uv=False)[2] > 0.1
    assert turned >= 10


def test_substituted_centres_and_bromine_analogues_are_bonded_as_drawn() -> None:
    from ase.build import molecule
    from ase.neighborlist import natural_cutoffs, neighbor_list

    rng = np.random.default_rng(0)
    for _ in range(50):
        atoms = xtb_main_group.substituted(rng)
        centre = atoms.get_chemical_symbols()[0]
        i = neighbor_list("i", atoms, natural_cutoffs(atoms, mult=1.1))
        assert np.bincount(i, minlength=len(atoms))[0] == xtb_main_group.CENTRES[centre]
        d = atoms.get_all_distances()[~np.eye(len(atoms), dtype=bool)]
        assert d.min() > 0.9
    bromo = xtb_main_group.brominated(molecule("CH3Cl"))
    assert bromo.get_chemical_formula() == "CH3Br"
    assert bromo.get_distance(0, 1) == pytest.approx(molecule("CH3Cl").get_distance(0, 1) + 0.18)
    central = xtb_main_group.brominated(molecule("ClF3"))  # the fluorines move, not the centre
    assert central.get_chemical_formula() == "BrF3"
    assert np.allclose(central.positions[0], molecule("ClF3").positions[0])


def test_changed_generator_is_not_mixed_into_old_chunks(tmp_path: Path) -> None:
    sizes = {emt.SOURCE: 4}
    generate(tmp_path, GenerateConfig(sizes=sizes, workers=1), progress=False)
    manifest = tmp_path / emt.SOURCE / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["generator"]  # as written before generator versions were recorded
    manifest.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=f"another generator 1 \\(now {emt.VERSION}\\)"):
        generate(tmp_path, GenerateConfig(sizes=sizes, workers=1), progress=False)


def test_a_source_grows_by_chunks_and_its_cut_last_chunk_is_made_again(tmp_path: Path) -> None:
    def run(n: int) -> None:
        generate(
            tmp_path, GenerateConfig(sizes={emt.SOURCE: n}, chunk=4, workers=1), progress=False
        )

    run(6)  # chunks of 4 and 2
    first = (tmp_path / emt.SOURCE / "chunk-00000.extxyz").read_text()
    run(10)  # chunk 0 kept, chunk 1 made again in full, chunk 2 new
    folder = tmp_path / emt.SOURCE
    assert (folder / "chunk-00000.extxyz").read_text() == first
    assert [len(read_structures_list(folder / f"chunk-0000{k}.extxyz")) for k in range(3)] == [
        4,
        4,
        2,
    ]
    fresh = tmp_path / "fresh"
    generate(fresh, GenerateConfig(sizes={emt.SOURCE: 10}, chunk=4, workers=1), progress=False)
    for k in range(3):  # the same files as generating 10 at once
        name = f"chunk-0000{k}.extxyz"
        assert (folder / name).read_text() == (fresh / emt.SOURCE / name).read_text()
    with pytest.raises(ValueError, match="more than the 8 asked for"):
        run(8)
    run(0)  # 0 leaves the source alone: nothing refused, nothing removed
    assert len(list(folder.glob("chunk-*.extxyz"))) == 3


def read_structures_list(path: Path) -> list:
    return list(read_structures(path))


def test_xtb_solids_are_periodic_with_stress() -> None:
    skipped: Counter[str] = Counter()
    out = xtb_solids.generate(3, chunk_rng(0, xtb_solids.SOURCE, 0), skipped)
    assert len(out) + skipped["scf"] == 3 and out
    for s in out:
        check_structure(s, require=("energy", "forces", "stress"))
        assert s.pbc.all() and s.n_atoms in (8, 12)


def test_failed_scf_is_skipped_and_counted(monkeypatch) -> None:
    from ase.calculators.calculator import Calculator

    class Failing(Calculator):
        implemented_properties = ("energy", "forces")

        def calculate(self, *args, **kwargs):
            raise RuntimeError("SCF did not converge")

    monkeypatch.setattr(xtb, "calculator", Failing)
    skipped: Counter[str] = Counter()
    assert xtb.generate(5, np.random.default_rng(0), skipped) == []
    assert skipped == {"scf": 5}


def test_run_is_reproducible_across_workers_and_resumes(tmp_path: Path) -> None:
    sizes = {emt.SOURCE: 30, xtb.SOURCE: 10}
    generate(tmp_path / "one", GenerateConfig(sizes=sizes, chunk=12, workers=1), progress=False)
    report = generate(
        tmp_path / "two", GenerateConfig(sizes=sizes, chunk=12, workers=2), progress=False
    )
    assert report["files"] == {emt.SOURCE: 3, xtb.SOURCE: 1}
    for f in sorted((tmp_path / "one").glob("*/*.extxyz")):
        assert f.read_text() == (tmp_path / "two" / f.relative_to(tmp_path / "one")).read_text()
    structures = list(read_structures(tmp_path / "one" / emt.SOURCE / "chunk-00002.extxyz"))
    assert len(structures) == 6 and structures[0].source == emt.SOURCE
    # a lost chunk is made again, the others are kept
    (tmp_path / "two" / emt.SOURCE / "chunk-00001.extxyz").unlink()
    again = generate(tmp_path / "two", GenerateConfig(sizes=sizes, chunk=12), progress=False)
    assert again["written_now"] == {emt.SOURCE: 12}


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown sources"):
        generate(Path("/nonexistent"), GenerateConfig(sizes={"dft": 3}), progress=False)


def test_a_generation_worker_ends_with_its_parent(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # a parent that starts a worker the way the generator does, then is killed
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, time\n"
        "from matscale.data.generate.run import quiet_worker\n"
        "def work(path):\n"
        "    import os\n"
        "    open(path, 'w').write(str(os.getpid()))\n"
        "    time.sleep(600)\n"
        "if __name__ == '__main__':\n"
        "    ctx = mp.get_context('spawn')\n"
        "    from concurrent.futures import ProcessPoolExecutor\n"
        "    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=quiet_worker)\n"
        f"    pool.submit(work, {str(tmp_path / 'pid')!r})\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)])
    pid_file = tmp_path / "pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)  # no clean-up at all: only the kernel can tell
    parent.wait()
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent")


def test_progress_counts_estimated_work_and_shows_structures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bar moves by each chunk's estimated core-seconds (so its time estimate is not set
    by the slow chunks that go first), shows no rate in them, and names the structures
    written so far."""
    from matscale.data.generate.run import COST

    sizes = {emt.SOURCE: 30, xtb_solids.SOURCE: 2}
    generate(tmp_path, GenerateConfig(sizes=sizes, chunk=10, workers=1), progress=True)
    err = capsys.readouterr().err
    work = round(30 * COST[emt.SOURCE] + 2 * COST[xtb_solids.SOURCE])
    assert f"{work}/{work} core-s (est.) [" in err
    assert "core-s (est.)/s" not in err and "s/ core-s" not in err
    assert "32/32 structures written" in err and "skipped" not in err


def test_progress_counts_written_and_skipped_structures_apart() -> None:
    """A structure its teacher could not label is not counted as written."""
    from collections import Counter

    from matscale.data.generate.run import _made_so_far

    written = Counter({"a": 420, "b": 2})
    skipped = {"a": Counter(), "b": Counter({"scf": 1, "contact": 1})}
    assert _made_so_far(written, skipped, 424) == "422/424 structures written, 2 skipped"
    assert _made_so_far(written, {"a": Counter()}, 422) == "422/422 structures written"
