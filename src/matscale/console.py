"""The ``matscale`` console script and ``python -m matscale``: :func:`matscale.cli.main`, with
Ctrl-C ending as one line, also while the CLI imports torch and ASE (2 s)."""

from __future__ import annotations

import sys

from matscale.signals import EXIT_CTRL_C


def main(argv: list[str] | None = None) -> int:
    """Run the command line; Ctrl-C outside a training run (which writes a checkpoint and
    exits itself) prints ``matscale: interrupted``, or what the interrupted work says it kept
    (:class:`~matscale.errors.SimulationInterrupted`), and exits with :data:`EXIT_CTRL_C`."""
    try:
        from matscale.cli import main as cli_main

        return cli_main(argv)
    except KeyboardInterrupt as exc:
        print(f"matscale: {str(exc) or 'interrupted'}", file=sys.stderr)
        return EXIT_CTRL_C
