"""The console script: Ctrl-C as one line."""

from __future__ import annotations

import pytest


def test_ctrl_c_anywhere_else_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Outside a training run (which checkpoints) and MD (which says what its files kept),
    Ctrl-C during a command or during the CLI's imports (torch and ASE: seconds) printed a
    KeyboardInterrupt traceback."""
    import matscale.cli
    from matscale import console

    def interrupted(argv: list[str] | None = None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(matscale.cli, "main", interrupted)
    assert console.main([]) == 130
    assert capsys.readouterr().err == "matscale: interrupted\n"
