"""Local launch commands: one process is plain Python, several go through standalone torchrun
(the multi-process tests in tests/train and tests/calc run through these)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from matscale.parallel.launch import free_port, local_command


def test_one_process_is_plain_python() -> None:
    assert local_command(["-m", "matscale", "--help"]) == [
        sys.executable,
        "-m",
        "matscale",
        "--help",
    ]


def test_several_processes_go_through_standalone_torchrun() -> None:
    cmd = local_command(["script.py", "--x"], processes=3)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc_per_node=3" in cmd
    assert cmd[-2:] == ["script.py", "--x"]


def test_a_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_no_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        local_command(["x.py"], processes=0)


def test_two_torchrun_processes_see_their_ranks(tmp_path: Path) -> None:
    script = tmp_path / "who.py"
    # a file per process: two processes printing to one pipe interleave their lines
    script.write_text(
        "import os, pathlib\n"
        "rank, world = os.environ['RANK'], os.environ['WORLD_SIZE']\n"
        f"pathlib.Path({str(tmp_path)!r}, 'seen-' + rank).write_text(rank + ' ' + world)\n"
    )
    out = subprocess.run(
        local_command([str(script)], processes=2), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.read_text() for p in tmp_path.glob("seen-*")) == ["0 2", "1 2"]


def test_two_standalone_runs_side_by_side_do_not_collide(tmp_path: Path) -> None:
    script = tmp_path / "sleepy.py"
    script.write_text(
        "import time\nimport torch.distributed as dist\n"
        "dist.init_process_group('gloo')\ntime.sleep(2)\ndist.barrier()\n"
    )
    runs = [subprocess.Popen(local_command([str(script)], processes=2), stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-2000:]
