"""Local launch commands: one process is plain Python, several go through torchrun on a free
port (the multi-process tests in tests/train and tests/calc run through these)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from matscale.parallel.launch import local_command


def test_one_process_is_plain_python() -> None:
    assert local_command(["-m", "matscale", "--help"]) == [
        sys.executable,
        "-m",
        "matscale",
        "--help",
    ]


def test_several_processes_go_through_torchrun_on_a_port_that_can_be_bound() -> None:
    cmd = local_command(["script.py", "--x"], processes=3)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=3"]
    assert cmd[5:] == ["script.py", "--x"]
    port = int(cmd[4].removeprefix("--master_port="))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free: a rendezvous can take it


def test_no_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        local_command(["x.py"], processes=0)


def test_two_torchrun_processes_see_their_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text("import os\nprint(os.environ['RANK'], os.environ['WORLD_SIZE'])\n")
    out = subprocess.run(
        local_command([str(script)], processes=2), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(out.stdout.splitlines()) == ["0 2", "1 2"]
