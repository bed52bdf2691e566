import json
from dataclasses import asdict
from pathlib import Path

import pytest

from matscale.cli import main


def test_demo_small_end_to_end(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--small", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "emt-metals" in out and "xtb-molecules" in out and "reference energies" in out
    assert "xtb-solids" in out
    store = tmp_path / "store-small"
    assert main(["data", "info", str(store), "--verify"]) == 0
    assert "all shards and index arrays match" in capsys.readouterr().out
    # a second run reuses the data and the store
    assert main(["demo", "--small", "--data-dir", str(tmp_path)]) == 0
    assert "is up to date" in capsys.readouterr().out
    shard = next((store / "shards").iterdir())
    shard.write_bytes(shard.read_bytes()[:-8] + b"\0" * 8)
    assert main(["data", "info", str(store), "--verify"]) == 3
    assert shard.name in capsys.readouterr().err


def test_pack_reports_bad_file_clearly(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "broken.extxyz"
    bad.write_text("2\nenergy=1.0 Properties=species:S:1:pos:R:3\nH 0 0 0\n")
    code = main(["data", "pack", str(bad), "--out", str(tmp_path / "st"), "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.extxyz" in err and "record 0" in err and "Traceback" not in err


def test_pack_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "meta.json").write_text("{}")
    (tmp_path / "a.xyz").write_text("")
    assert main(["data", "pack", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "st")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "data" in capsys.readouterr().out


def test_readme_pack_command_on_a_generated_directory(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw"
    generate = ["data", "generate", "--out", str(raw), "--size", "emt-metals=30",
                "--size", "xtb-molecules=0", "--size", "xtb-solids=0"]  # fmt: skip
    assert main([*generate, "--workers", "1"]) == 0
    pack = ["data", "pack", str(raw), "--out", str(tmp_path / "store"), "--workers", "1",
            "--require", "energy,forces"]  # fmt: skip
    assert main(pack) == 0
    assert "emt-metals" in capsys.readouterr().out
    # the same directory again, with another seed: refused, nothing mixed
    assert main([*generate, "--seed", "1"]) == 2
    assert "holds chunks made with another seed 0 (now 1)" in capsys.readouterr().err
    # a negative seed wrote its manifest before failing, which then refused every valid run
    # into that folder; a packed store as --out took raw chunks in beside its shards
    fresh = ["--out", str(tmp_path / "fresh"), *generate[4:]]
    assert main(["data", "generate", *fresh, "--seed", "-1"]) == 2
    assert "--seed must be a non-negative integer, got -1" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
    store = ["data", "generate", "--out", str(tmp_path / "store"), *generate[4:]]
    assert main(store) == 2
    assert "is a packed store" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("mine\n")
    assert main(["data", "generate", "--out", str(tmp_path / "a-file"), *generate[4:]]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "store" / "emt-metals").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--require", "energy,force"], "unknown labels"),
        (["--part", "abc"], "is not I/N"),
        (["--part", "2/2"], "is not I/N"),
    ],
)
def test_pack_argument_errors(tmp_path: Path, capsys, args, words) -> None:
    (tmp_path / "a.xyz").write_text("1\n\nH 0 0 0\n")
    assert (
        main(["data", "pack", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "st"), *args]) == 2
    )
    assert words in capsys.readouterr().err


def test_pack_refuses_to_write_over_other_things(tmp_path: Path, capsys) -> None:
    (tmp_path / "a.xyz").write_text("1\n\nH 0 0 0\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    code = main(
        ["data", "pack", str(tmp_path / "a.xyz"), "--out", str(tmp_path / "notes"), "--overwrite"]
    )
    assert code == 2 and "not a store" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").exists()
    assert main(["data", "pack", str(tmp_path / "a.xyz"), "--out", str(tmp_path)]) == 2
    assert "contains input files" in capsys.readouterr().err


def test_generate_size_errors(capsys, tmp_path: Path) -> None:
    assert main(["data", "generate", "--out", str(tmp_path), "--size", "emt-metals"]) == 2
    assert "SOURCE=N" in capsys.readouterr().err
    assert main(["data", "generate", "--out", str(tmp_path), "--size", "dft=3"]) == 2
    assert "unknown sources" in capsys.readouterr().err


def test_reader_options_reach_the_reader(tmp_path: Path, capsys) -> None:
    from tests.conftest import emt_structures
    from tests.data.formats import write_mptrj

    write_mptrj(tmp_path / "MPtrj.json", {"mp-1": emt_structures(3)})
    args = ["data", "pack", str(tmp_path / "MPtrj.json"), "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "raw")]) == 0
    assert (
        main(
            [
                *args,
                "--out",
                str(tmp_path / "corr"),
                "--reader-option",
                "energy_key=corrected_total_energy",
            ]
        )
        == 0
    )
    from matscale.data.store import Store

    raw, corr = Store(tmp_path / "raw"), Store(tmp_path / "corr")
    assert abs(raw[0].energy - corr[0].energy - 1.0) < 1e-9
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--reader-option", "unit=eV"]) == 2
    assert "has no options ['unit']" in capsys.readouterr().err


def test_demo_run_matches_configs_demo_yaml() -> None:
    """configs/demo.yaml is documented as the demo's run for `matscale train`: the two must
    not drift apart (the README quotes one and the demo runs the other)."""
    from matscale.cli import DEMO_RUN
    from matscale.config import load

    yaml_path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    from_yaml, from_demo = asdict(load(yaml_path)), asdict(load(None, DEMO_RUN))
    for key in ("model", "train", "data"):
        assert from_yaml[key] == from_demo[key], key


def test_output_into_a_closed_pipe_is_quiet(tiny_store: Path) -> None:
    import subprocess
    import sys

    command = f"{sys.executable} -m matscale data info {tiny_store} | head -n 1"
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_overrides_may_follow_options(capsys) -> None:
    # `matscale plan run.yaml --hardware h100-80gb model.width=256` said "unrecognized
    # arguments: model.width=256", as if the key were wrong
    config = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    before = ["plan", config, "model.width=256", "data.store=none", "--hardware", "h100-80gb"]
    assert main([*before, "--json"]) == 0
    first = capsys.readouterr().out
    after = ["plan", config, "--hardware", "h100-80gb", "model.width=256", "--json"]
    assert main([*after, "data.store=none"]) == 0
    assert capsys.readouterr().out == first
    assert json.loads(first)["parameters"] > 500_000  # width 256, not the demo's 80
    # what is neither an option nor an override is still argparse's error
    with pytest.raises(SystemExit):
        main([*after, "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


@pytest.mark.parametrize(
    "verb",
    ["eval", "predict", "md", "relax", "bench", "plan", "demo", "data pack", "data generate",
     "data label"],
)  # fmt: skip
def test_help_gives_defaults_that_say_something(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`md --help` ended --head, --friction and --pressure with "(default: None)", which
    contradicted their own help (the model's default head; the ensemble's value)."""
    with pytest.raises(SystemExit) as leaving:
        main([*verb.split(), "--help"])
    assert leaving.value.code == 0
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: [])" not in text
    assert "(default: " in text  # the others still give theirs
