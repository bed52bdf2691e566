"""A compiled potential (``load_potential(compile=True)``, ``--compile``): the eager model's
numbers on structures of any size, in MD, for both force heads, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from matscale.calc import MatscaleCalculator, load_potential
from matscale.calc.inference import predict
from matscale.cli import main
from matscale.errors import DataError
from tests.calc.structures import alloy


def _same(compiled: list[dict], eager: list[dict]) -> None:
    for c, e in zip(compiled, eager, strict=True):
        assert c["energy"] == pytest.approx(e["energy"], rel=1e-6, abs=1e-5)
        np.testing.assert_allclose(c["energies"], e["energies"], atol=1e-5)
        np.testing.assert_allclose(c["forces"], e["forces"], atol=1e-5)
        if "stress" in e:
            np.testing.assert_allclose(c["stress"], e["stress"], atol=1e-6)


def test_compiled_potential_equals_the_eager_one(tiny_model: Path) -> None:
    eager = load_potential(tiny_model)
    compiled = load_potential(tiny_model, compile=True)
    assert compiled.explicit_forces and not eager.explicit_forces
    # one structure at a time (sizes and edge counts change: one dynamic graph), then a batch
    # of several, periodic and not
    for atoms in (alloy(0), alloy(1, repeat=3)):
        _same(predict(compiled, [atoms], head="emt"), predict(eager, [atoms], head="emt"))
    mols = [molecule("H2O"), molecule("CH4"), molecule("C2H6")]
    _same(predict(compiled, mols, head="mol"), predict(eager, mols, head="mol"))
    mixed = [alloy(2), alloy(3, repeat=(2, 2, 1))]
    _same(predict(compiled, mixed, head="emt"), predict(eager, mixed, head="emt"))


def test_compiled_md_follows_the_eager_trajectory(tiny_model: Path) -> None:
    def trajectory(compile: bool) -> np.ndarray:
        atoms = alloy(4)
        atoms.set_velocities(np.random.default_rng(0).normal(0, 0.02, (len(atoms), 3)))
        atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt", compile=compile)
        VelocityVerlet(atoms, timestep=1.0).run(8)  # fs; the edge list changes as atoms move
        return atoms.positions.copy()

    np.testing.assert_allclose(trajectory(True), trajectory(False), atol=1e-5)


def test_a_compiled_direct_force_model_equals_its_eager_self(tiny_direct_model: Path) -> None:
    compiled = load_potential(tiny_direct_model, compile=True)
    assert not compiled.explicit_forces  # nothing to write out: the compiled head's forces
    atoms = [alloy(5), alloy(6, repeat=3)]
    expected = predict(load_potential(tiny_direct_model), atoms, head="emt")
    _same(predict(compiled, atoms, head="emt"), expected)


def test_the_cli_compiles_on_request(tiny_model: Path, tmp_path: Path) -> None:
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(7))
    out = tmp_path / "relaxed.extxyz"
    args = ["relax", str(tiny_model), str(start), "--head", "emt", "--steps", "3"]
    assert main([*args, "--compile", "--out", str(out), "--no-progress", "--fmax", "10"]) == 0
    eager = tmp_path / "eager.extxyz"
    assert main([*args, "--out", str(eager), "--no-progress", "--fmax", "10"]) == 0
    np.testing.assert_allclose(ase.io.read(out).positions, ase.io.read(eager).positions, atol=1e-5)


def test_compile_refusals_are_one_clear_line(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataError, match="compile and edge_chunk cannot be combined"):
        load_potential(tiny_model, compile=True, edge_chunk=1000)
    monkeypatch.setattr("matscale.parallel.plan.shutil.which", lambda name: None)
    with pytest.raises(DataError, match="needs a compiler"):
        load_potential(tiny_model, compile=True)


def test_in_float64_the_compiled_forces_equal_autograd_to_round_off(tiny_model: Path) -> None:
    atoms = alloy(8)
    fast = load_potential(tiny_model, dtype="float64", compile=True)
    compiled = predict(fast, [atoms], head="emt")
    eager = predict(load_potential(tiny_model, dtype="float64"), [atoms], head="emt")
    np.testing.assert_allclose(compiled[0]["forces"], eager[0]["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(compiled[0]["stress"], eager[0]["stress"], rtol=0, atol=1e-12)
    assert compiled[0]["energy"] == pytest.approx(eager[0]["energy"], rel=1e-12)
