"""Config validation: every impossible setting is one ConfigError naming the key, at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from matscale.config import RunConfig, load, load_tree
from matscale.errors import ConfigError
from matscale.train.loop import train
from matscale.validation import RULES, check_config, problems


@pytest.mark.parametrize(
    "override",
    [
        # each of these was accepted (and deleted checkpoints, ascended the gradient, exported
        # 1e36 errors) or raised ZeroDivisionError / a math domain error inside a run
        "train.keep_checkpoints=-1",
        "train.keep_checkpoints=0",
        "train.grad_clip=-1",
        "train.ema_decay=1.5",
        "model.cutoff=0",
        "model.cutoff=-1",
        "model.cutoff=100",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "data.split=[0.5,0.6,0.1]",
        "train.lr=-1",
        "train.lr=.nan",
        "data.fraction=0",
        "parallel.threads=-1",
        "train.steps=0",
        "data.max_atoms=0",
        "parallel.timeout_s=0",
        "train.max_bad_steps=0",
    ],
)
def test_an_impossible_setting_is_refused_at_load_naming_its_key(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}=.* is not allowed: "):
        load(None, [override])


def test_every_problem_is_reported_on_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        load(None, ["train.lr=-1", "train.eval_every=0"])
    message = str(exc.value)
    assert "\n" not in message
    assert "train.lr" in message and "train.eval_every" in message


def test_the_defaults_and_every_rule_key_exist() -> None:
    assert problems(RunConfig()) == []
    for key, _, _ in RULES:
        node: object = RunConfig()
        for part in key.split("."):
            node = getattr(node, part)  # AttributeError: a rule for a key that is gone


def test_configs_built_in_python_are_checked_when_trained(tmp_path: Path) -> None:
    cfg = RunConfig(out_dir=str(tmp_path))
    cfg.train.eval_every = 0
    with pytest.raises(ConfigError, match=r"train\.eval_every"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_nothing_to_learn_is_refused() -> None:
    with pytest.raises(ConfigError, match="nothing to learn"):
        check_config(load_tree(RunConfig, None, ["train.energy_weight=0", "train.force_weight=0"]))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.cutoff=6.0", "exceeds the store's cutoff"),
        ("data.holdout_families=[nonsense]", "data.holdout_families names"),
        ("data.mixture={nonsense: 1.0}", "data.mixture names"),
        ("data.split=[0.999,0.001,0.0]", "leaves no structure in validation"),
    ],
)
def test_settings_the_store_cannot_give_are_refused_before_training(
    tiny_store: Path, tmp_path: Path, override: str, match: str
) -> None:
    cfg = load(
        None, [f"data.store={tiny_store}", f"out_dir={tmp_path}", "model.cutoff=4.0", override]
    )
    with pytest.raises(ConfigError, match=match):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written, not even the run folder


def test_a_pack_of_no_structures_is_refused_naming_the_first_skipped_record(
    tmp_path: Path,
) -> None:
    import ase.io
    import numpy as np
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from matscale.data.pack import PackConfig, pack
    from matscale.errors import DataError

    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[5, 5, 5], pbc=True)
    atoms.calc = SinglePointCalculator(atoms, energy=float("nan"), forces=np.zeros((2, 3)))
    ase.io.write(tmp_path / "bad.extxyz", [atoms])  # its one record is skipped: NaN energy
    (tmp_path / "empty.extxyz").write_text("")
    # packing these made a store of nothing (exit 0), which only training then refused
    for name, why in [
        ("bad.extxyz", r"every record was skipped \(energy: nan: 1; the first: file "
                       r".*bad\.extxyz, record 0, field energy: energy is nan\)"),
        ("empty.extxyz", "the inputs hold none"),
    ]:  # fmt: skip
        with pytest.raises(DataError, match=rf"{name}: no structure to store: {why}"):
            pack([tmp_path / name], tmp_path / "store", PackConfig(workers=1, cutoff=4.0),
                 progress=False)  # fmt: skip
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.extxyz", "empty.extxyz"]
