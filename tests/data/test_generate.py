import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from matscale.data.generate import emt, xtb, xtb_solids
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


def test_changed_generator_is_not_mixed_into_old_chunks(tmp_path: Path) -> None:
    sizes = {emt.SOURCE: 4}
    generate(tmp_path, GenerateConfig(sizes=sizes, workers=1), progress=False)
    manifest = tmp_path / emt.SOURCE / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["generator"]  # as written before generator versions were recorded
    manifest.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=f"another generator 1 \\(now {emt.VERSION}\\)"):
        generate(tmp_path, GenerateConfig(sizes=sizes, workers=1), progress=False)


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

    monkeypatch.setattr(xtb, "_calculator", Failing)
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
