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
    assert {"bulk", "surface"} <= families and any(f.startswith("md-") for f in families)
    for s in a:
        check_structure(s, require=("energy", "forces"))
        assert set(s.numbers) <= {13, 28, 29, 46, 47, 78, 79}
        assert (s.stress is None) == (s.family == "surface")  # no stress with vacuum
        assert 6 <= s.n_atoms <= 60


def test_xtb_molecules_are_organic_and_labelled() -> None:
    skipped: Counter[str] = Counter()
    out = xtb.generate(12, chunk_rng(0, xtb.SOURCE, 0), skipped)
    assert len(out) + skipped["scf"] == 12
    for s in out:
        check_structure(s, require=("energy", "forces"))
        assert set(s.numbers) <= xtb.ORGANIC and not s.pbc.any() and s.stress is None


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
