"""Shipped models: listed, loaded and used offline with their default head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from matscale import pretrained
from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.errors import DataError
from tests.calc.conftest import train_tiny


@pytest.fixture()
def models(monkeypatch, tmp_path: Path) -> Path:
    """An empty package folder of shipped models, for these tests only."""
    folder = tmp_path / "models"
    monkeypatch.setattr(pretrained, "MODELS", folder)
    return folder


def test_a_shipped_model_is_listed_loaded_and_calculates(
    models: Path, tiny_store: Path, tmp_path: Path
) -> None:
    model = train_tiny(tiny_store, tmp_path / "runs")
    assert pretrained.available() == []
    out = pretrained.ship(model, "tiny-test", default_head="emt")
    assert out == models / "tiny-test.pt" and pretrained.available() == ["tiny-test"]
    assert "MatscaleCalculator.pretrained('tiny-test')" in pretrained.card("tiny-test")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = MatscaleCalculator.pretrained("tiny-test")  # the default head, no head=
    assert atoms.calc.head == "emt"
    direct = atoms.copy()
    direct.calc = MatscaleCalculator.from_file(model, head="emt")
    assert atoms.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), direct.get_forces(), atol=1e-6)
    assert MatscaleCalculator.pretrained("tiny-test", head="mol").head == "mol"
    assert pretrained.load("tiny-test").info["default_head"] == "emt"
    from matscale.bench.subjects import subject

    assert subject("tiny-test").name == "tiny-test (emt)"  # `matscale bench NAME` too


def test_the_cli_takes_a_shipped_name_and_its_default_head(
    models: Path, tiny_store: Path, tmp_path: Path, capsys
) -> None:
    import ase.io

    from matscale.cli import main

    pretrained.ship(train_tiny(tiny_store, tmp_path / "runs"), "tiny-cli", default_head="emt")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=2)
    ase.io.write(tmp_path / "cu.xyz", atoms)
    out = tmp_path / "relaxed.xyz"
    assert (
        main(["relax", "tiny-cli", str(tmp_path / "cu.xyz"), "--out", str(out), "--steps", "3"])
        == 0
    )
    relaxed = ase.io.read(out)
    # the default head: with a model of two heads and no --head, nothing else would choose
    direct = relaxed.copy()
    direct.calc = MatscaleCalculator.from_file(models / "tiny-cli.pt", head="emt")
    assert relaxed.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-5)
    # its records name the model by its name, not the folder it was installed in
    assert relaxed.info["labelled_by"] == "matscale tiny-cli, head emt"
    assert main(["relax", "no-such-model", str(tmp_path / "cu.xyz")]) != 0
    assert "neither a model file nor a shipped model" in capsys.readouterr().err

    # `matscale models` lists it with its default head; with its name, prints its card
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "tiny-cli" in line)
    assert "emt, mol" in row and row.split()[3] == "emt"
    assert main(["models", "tiny-cli"]) == 0
    assert "MatscaleCalculator.pretrained('tiny-cli')" in capsys.readouterr().out
    assert main(["models", "nope"]) == 2
    assert "no shipped model 'nope'; shipped: tiny-cli" in capsys.readouterr().err


def test_unknown_names_heads_and_oversized_files_are_refused(
    models: Path, tiny_store: Path, tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(DataError, match=r"no shipped model 'nope'; shipped: none"):
        MatscaleCalculator.pretrained("nope")
    model = train_tiny(tiny_store, tmp_path / "runs")
    with pytest.raises(DataError, match=r"default_head 'metals' is not one of .*'emt', 'mol'"):
        pretrained.ship(model, "x", default_head="metals")
    monkeypatch.setattr(pretrained, "MAX_BYTES", 1000)
    with pytest.raises(DataError, match="MiB a shipped model may take"):
        pretrained.ship(model, "x", default_head="emt")
    assert pretrained.available() == []


def test_every_shipped_model_loads_offline() -> None:
    # what ships in the package (none until the foundation model is trained): each one loads
    # and computes with its default head
    for name in pretrained.available():
        calc = MatscaleCalculator.pretrained(name)
        assert (pretrained.MODELS / f"{name}.md").is_file()
        assert (pretrained.MODELS / f"{name}.pt").stat().st_size <= pretrained.MAX_BYTES
        assert calc.head in calc.potential.graph.heads


def test_the_foundation_models_card_gives_its_measured_limits() -> None:
    """The card made from the training run says nothing of the benchmarks run afterwards:
    `matscale models matscale-foundation-v2` omitted its dcdft and S22 results, the 12
    elements without a minimum and its spurious minimum under compression."""
    text = pretrained.card("matscale-foundation-v2")
    assert text.startswith(pretrained.path("matscale-foundation-v2").with_suffix(".md").read_text())
    assert "## Measured limits of this shipped model" in text
    for fact in ("dcdft", "S22", "H, Li, N, F", "V/V0 ≈ 0.45", "ExtrapolationWarning"):
        assert fact in text
    for name in pretrained.available():  # a limits file belongs to a shipped model
        assert pretrained.card(name)
    assert {p.name.removesuffix(".limits.md") for p in pretrained.MODELS.glob("*.limits.md")} <= (
        set(pretrained.available())
    )
