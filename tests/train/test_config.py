from pathlib import Path

import pytest
import yaml

from matscale.config import ConfigError, RunConfig, describe, dump, from_dict, load


def test_defaults_round_trip_through_yaml() -> None:
    cfg = RunConfig()
    assert from_dict(RunConfig, yaml.safe_load(dump(cfg))) == cfg


def test_file_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: a\ntrain:\n  lr: 0.01\nmodel:\n  width: 32\n")
    cfg = load(
        path,
        [
            "train.lr=1e-3",
            "data.holdout_families=[surface, md-1500K]",
            "data.mixture={emt-metals: 2, xtb-molecules: 1}",
            "train.force_loss=mse",
            "model.pair_repulsion=false",
        ],
    )
    assert cfg.train.force_loss == "mse" and cfg.train.loss == "mae"
    assert not cfg.model.pair_repulsion and RunConfig().train.force_loss is None
    assert cfg.name == "a" and cfg.model.width == 32 and cfg.train.lr == 1e-3
    assert cfg.data.holdout_families == ("surface", "md-1500K")
    assert cfg.data.mixture == {"emt-metals": 2.0, "xtb-molecules": 1.0}


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.lr=fast", "train.lr: expected float"),
        ("train.nope=1", "train: unknown keys ['nope']"),
        ("model.activation=swish", "not one of"),
        ("train.force_loss=l1", "not one of"),
        ("data.split=[0.9, 0.1]", "expected 3 values"),
        ("model.width=0", "positive"),
        ("lr", "not key=value"),
        ("train.lr=[1,", "override 'train.lr=[1,': not a YAML value"),
    ],
)
def test_bad_overrides_name_the_key(override, words) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load(None, [override])


def test_describe_lists_every_key_with_its_docstring() -> None:
    lines = describe()
    assert any(line.startswith("train.lr = 0.005: Peak learning rate") for line in lines)
    assert any(line.startswith("model.width = 128") for line in lines)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- a\n- b\n", "expected a mapping of sections (data:, model:, train:, ...), got list"),
        ("abc", "expected a mapping of sections (data:, model:, train:, ...), got str"),
        ("train:\n  lr: [1,\n", "not valid YAML (expected the node content, but found"),
        (b"\xff\xfe garbage", "not a YAML config (not UTF-8 text)"),
        # PyYAML keeps the last of two equal keys without a word
        (
            "train:\n  lr: 0.01\n  steps: 3\n  lr: 0.02\n",
            "not valid YAML (the key 'lr' is given twice at line 4, column 3)",
        ),
    ],
)
def test_a_file_that_is_no_config_is_one_line_naming_it(
    tmp_path: Path, text: str | bytes, words: str
) -> None:
    # with an override, a YAML list or string crashed in set_dotted (TypeError); bytes that
    # are not UTF-8 gave a UnicodeDecodeError traceback, bad YAML a multi-line dump
    path = tmp_path / "run.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as caught:
        load(path, ["name=x"])
    said = str(caught.value)
    assert said.startswith(f"{path}: ") and words in said and "\n" not in said
