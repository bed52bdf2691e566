"""The README's "Use a model" section runs as written, after `matscale demo --small`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_use_a_model_section_runs_as_written(tmp_path: Path) -> None:
    use = section("Use a model")
    (shell,) = blocks(use, "bash")
    (python,) = blocks(use, "python")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    sh("matscale demo --small")
    eval_out = sh(shell.replace("\\\n", " ").splitlines()[0]).stdout
    assert "source:emt-metals" in eval_out and "element:Cu" in eval_out
    for line in shell.replace("\\\n", " ").splitlines()[1:]:
        sh(line)
    assert (tmp_path / "data/eval-small/summary.json").is_file()
    assert (tmp_path / "data/md.traj").is_file() and (tmp_path / "data/relaxed.extxyz").is_file()
    (tmp_path / "use.py").write_text(python)
    out = sh(f"{sys.executable} use.py").stdout
    energies = out.strip().splitlines()[-1]
    assert energies.startswith("[") and energies.count(",") == 2


def test_the_foundation_model_section_runs_as_written(tmp_path: Path) -> None:
    # offline, from any folder: the shipped model lives inside the package
    (python,) = blocks(section("The foundation model: `matscale-foundation-v2`"), "python")
    (tmp_path / "foundation.py").write_text(python)
    proc = subprocess.run(
        [sys.executable, "foundation.py"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nan" not in proc.stdout.lower() and proc.stdout.count("[") >= 4  # stress, 3 forces
