"""Progress bars that suit both a terminal and a log file.

On a terminal: tqdm's bar, redrawn in place. Piped into a file or another program, a bar
redrawn ten times a second becomes hundreds of lines; there the same bar writes a plain line
at most every :data:`LOG_INTERVAL_S` seconds (and at the end).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

#: Seconds between the lines a bar writes when its stream is not a terminal.
LOG_INTERVAL_S = 30.0


def progress_bar(
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    enabled: bool = True,
    initial: int = 0,
    file: TextIO | None = None,
    bar_format: str | None = None,
) -> Any:
    """A ``tqdm`` bar on ``file`` (default stderr): live on a terminal, a line every
    :data:`LOG_INTERVAL_S` seconds otherwise; a no-op bar when not ``enabled``.
    ``bar_format``: tqdm's, for a bar whose rate would mislead (None: tqdm's own)."""
    from tqdm import tqdm

    stream = file or sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    bar = tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=stream if interactive else _LineStream(stream),
        disable=not enabled,
        dynamic_ncols=interactive,
        mininterval=0.1 if interactive else LOG_INTERVAL_S,
        maxinterval=10.0 if interactive else LOG_INTERVAL_S * 4,
        ascii=None if interactive else True,
        bar_format=bar_format,
        # into a file, no line at the start (a command that fails at once printed its "0
        # structures" line above the error): tqdm shows nothing at creation with a delay,
        # whose removal then lets the periodic and final lines through
        delay=0.0 if interactive else 1.0,
    )
    bar.delay = 0.0
    return bar


class _LineStream:
    """A text stream that turns tqdm's carriage-return redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
