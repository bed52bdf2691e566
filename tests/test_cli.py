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
    assert "all shards match" in capsys.readouterr().out
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
