"""Command lines that start a Python program on this machine, on one process or on several
through torchrun (``python -m torch.distributed.run --standalone``: its rendezvous takes a
free port itself, so runs side by side do not collide).

Tests and benchmarks that run ``matscale train`` or ``matscale md --domains`` on several local
processes build their commands here, so the port and torchrun's arguments live in one place.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick), for processes
    started without torchrun (``torch.multiprocessing``) that rendezvous through
    ``MASTER_PORT``. Another program could take it before the rendezvous binds it; on a test
    machine that race is rare enough to accept."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_command(program: Sequence[str], processes: int = 1) -> list[str]:
    """The command that runs ``python *program`` (``["-m", "matscale", "train", ...]`` or
    ``[script, ...]``; torchrun takes no ``-c``) on ``processes`` local processes: plain Python
    for one, standalone torchrun for more."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    if processes == 1:
        return [sys.executable, *program]
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [sys.executable, *torchrun, *program]


__all__ = ["free_port", "local_command"]
