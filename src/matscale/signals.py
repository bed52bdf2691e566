"""Stop requests from outside a run: SIGTERM and SIGUSR1 (what SLURM sends before a job's time
limit, ``#SBATCH --signal``) and SIGINT (Ctrl-C) ask a run to finish its step, write a
checkpoint and exit with :data:`EXIT_INTERRUPTED`; the same command then resumes it. A second
signal exits at once, as the signal's default would (a user who presses Ctrl-C twice means it).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

#: Exit code of a run stopped by a signal after writing its checkpoint: sysexits' EX_TEMPFAIL
#: ("try again later"). A SLURM script requeues the job on it (``matscale sweep slurm``).
EXIT_INTERRUPTED = 75
#: Exit status of a command stopped by Ctrl-C that has nothing to resume (the shells' 128 +
#: SIGINT): prediction, evaluation, MD (which says what its files kept), packing.
EXIT_CTRL_C = 130

#: The signals that ask for a checkpoint and a clean stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """A context that turns :data:`STOP_SIGNALS` into a flag the training loop reads after
    each step (``requested``, ``signal_name``); the previous handlers come back on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """True once a stop signal has arrived."""
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            return
        # the second signal: the default action now (terminate), as if we had not asked
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self._previous.clear()
