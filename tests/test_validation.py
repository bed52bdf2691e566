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


def test_what_zero3_cannot_do_is_refused_at_load_together(capsys) -> None:
    """An EMA and conservative forces under DeepSpeed ZeRO-3 were refused one at a time, as
    tracebacks, after the model was built; and `matscale plan` said such a run "fits"."""
    from matscale.cli import main

    zero3 = ["parallel.backend=deepspeed", "parallel.zero_stage=3"]
    with pytest.raises(ConfigError) as exc:
        load(None, zero3)
    message = str(exc.value)
    assert "partitions the weights an EMA would average" in message
    assert "cannot train conservative forces" in message
    load(None, [*zero3, "train.ema_decay=null", "model.force_head=direct"])  # what it can do
    load(None, ["parallel.backend=deepspeed", "parallel.zero_stage=2"])
    assert main(["plan", *zero3, "data.store=nowhere", "--hardware", "h100-80gb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "an EMA would average" in err and "fits" not in err


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


def test_plateau_without_a_validation_split_is_refused_at_load() -> None:
    """It trained until its first evaluation and died with a KeyError from the loop."""
    with pytest.raises(ConfigError, match=r"train\.schedule=plateau .* leaves no validation"):
        check_config(load_tree(RunConfig, None, ["train.schedule=plateau", "data.split=[1,0,0]"]))


def _cu_frames(n: int, *, source: str | None = None, labels: bool = True) -> list:
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    rng = np.random.default_rng(0)
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        if labels:
            atoms.calc = EMT()
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        if source is not None:
            atoms.info["source"] = source
        frames.append(atoms)
    return frames


def test_a_source_named_like_a_split_is_refused(tmp_path: Path) -> None:
    """A source named `test` (files given directly are named by their stem: test.xyz) had
    its validation errors replaced by the test split's in the final metrics and the card."""
    import ase.io

    from matscale.data.pack import PackConfig, pack
    from matscale.data.structure import source_name_problem
    from matscale.errors import DataError

    for name in ("test", "holdout", "holdout:surface", "val", "train", "a/b", ""):
        assert source_name_problem(name), name
    assert source_name_problem("testing") is None and source_name_problem("emt-metals") is None
    ase.io.write(tmp_path / "test.extxyz", _cu_frames(4))
    with pytest.raises(DataError, match=r"test\.extxyz, record 0, field 'source': source name "
                                        r"'test' is a split's name"):  # fmt: skip
        pack([tmp_path / "test.extxyz"], tmp_path / "store", PackConfig(workers=1, cutoff=4.0),
             progress=False)  # fmt: skip
    assert not (tmp_path / "store").exists()


def test_a_store_without_labels_is_refused_and_unlabelled_targets_are_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store packed with --require '' trained with loss 0 and exported an untrained model,
    exit 0; a stress weight on a store without stress, a warm-up longer than the run and a
    max_atoms below the largest structure passed without a word."""
    import ase.io

    from matscale.data.pack import PackConfig, pack

    ase.io.write(tmp_path / "bare.extxyz", _cu_frames(40, source="cu", labels=False))
    pack([tmp_path / "bare.extxyz"], tmp_path / "bare", PackConfig(workers=1, cutoff=4.0,
         require=()), progress=False)  # fmt: skip
    base = [f"out_dir={tmp_path / 'runs'}", "model.cutoff=4.0", "model.width=8", "model.depth=1"]
    cfg = load(None, [f"data.store={tmp_path / 'bare'}", *base])
    with pytest.raises(ConfigError, match="holds no energy, forces or stress: nothing to learn"):
        train(cfg, progress=False)
    ase.io.write(tmp_path / "cu.extxyz", _cu_frames(40, source="cu"))
    pack([tmp_path / "cu.extxyz"], tmp_path / "cu", PackConfig(workers=1, cutoff=4.0),
         progress=False)  # fmt: skip
    settings = ["train.stress_weight=1", "train.steps=2", "data.max_atoms=2",
                "train.eval_every=2", "train.checkpoint_every=2"]  # fmt: skip
    train(load(None, [f"data.store={tmp_path / 'cu'}", *base, *settings]), progress=False)
    out = capsys.readouterr().out
    assert "warning: train.stress_weight=1, and no structure of" in out
    assert "warning: data.max_atoms=2, and the store's largest structure has 4 atoms" in out
    assert "warning: train.warmup_steps=100 is not below train.steps=2" in out
    assert "force_weight" not in out  # forces are there


def test_parallel_settings_the_backend_ignores_are_warned_about() -> None:
    """ZeRO stages under DDP, offloading without sharding and more threads than cores ran
    without a word."""
    import os

    from matscale.validation import parallel_warnings

    assert parallel_warnings(load(None, [])) == []
    said = " | ".join(parallel_warnings(load(None, [
        "parallel.backend=ddp", "parallel.zero_stage=2", "parallel.cpu_offload=true",
        f"parallel.threads={(os.cpu_count() or 1) + 1}"])))  # fmt: skip
    assert "parallel.zero_stage=2 is DeepSpeed's setting: ignored with parallel.backend=ddp" in said
    assert "parallel.cpu_offload is ignored with parallel.backend=ddp" in said
    assert "threads beyond the cores only wait" in said
    for fine in (["parallel.backend=deepspeed", "parallel.zero_stage=2"],
                 ["parallel.backend=fsdp", "parallel.cpu_offload=true"]):  # fmt: skip
        assert parallel_warnings(load(None, fine)) == []


def test_a_run_without_a_validation_split_shows_its_test_errors(
    tiny_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """data.split=[0.9,0,0.1] printed empty "[val @ step 2]" lines and a table of blank rows;
    holding out every family said "leaves no structure in train (0.9 of 120 structures)"."""
    base = [f"data.store={tiny_store}", f"out_dir={tmp_path}", "model.cutoff=4.0",
            "model.width=8", "model.depth=1", "train.steps=2", "train.eval_every=1",
            "train.warmup_steps=1"]  # fmt: skip
    train(load(None, [*base, "data.split=[0.9,0,0.1]"]), progress=False)
    out = capsys.readouterr().out
    assert "[val @" not in out
    table = out[out.index("mean absolute errors") :].splitlines()
    assert "energy meV/atom" in table[1]
    all_row = next(line for line in table if line.strip().startswith("all"))
    assert "- /" in all_row and all_row.split("/")[-1].strip() not in ("", "-")
    # every structure held out (check_splits on the splits such a run makes)
    from types import SimpleNamespace

    import numpy as np

    from matscale.train.run import check_splits

    cfg = load(None, [*base, "data.holdout_families=[bulk]"])
    everything = SimpleNamespace(
        train=np.array([], int), val=np.array([], int), test=np.array([], int),
        holdout=np.arange(120),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"hold out every structure .* nothing is left"):
        check_splits(everything, cfg, 120)  # type: ignore[arg-type]


def test_a_sweep_config_given_as_a_run_config_says_so(capsys) -> None:
    """`matscale plan configs/sweeps/cpu.yaml` said "unknown keys ['base', 'sizes', ...]"."""
    from matscale.cli import main

    with pytest.raises(ConfigError, match=r"cpu\.yaml is a sweep config .*`matscale sweep plan`"):
        load("configs/sweeps/cpu.yaml")
    assert main(["plan", "configs/sweeps/cpu.yaml"]) == 2
    assert "is a sweep config" in capsys.readouterr().err
