"""SIGTERM / SIGINT turned into a "stop at the next batch boundary" flag, from the start of the process.

``resnet-ffcv fit`` installs :data:`STOP` before anything slow (imports, data setup, NCCL, compile), so a signal
during start-up is remembered instead of killing the process with 143/130; the spot callback reads the flag
at every batch (and before the first one) and exits 75. Standard library only: installed before torch loads.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

INTERRUPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: "temporary failure, rerun me"
# No progress for watchdog.stall_minutes, or a collective timed out (run/watchdog.py): the process ended itself;
# checkpoint_latest.ckpt is the last one saved (untouched). Retryable, a bounded number of times per run.
STALLED_EXIT_CODE = 76
HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """The process's stop flag: the first SIGTERM/SIGINT sets ``reason``; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.reason is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C aborts now
            raise KeyboardInterrupt
        if self.reason is None:  # no logging here: the handler may interrupt the logging module mid-write
            self.reason = f"received {signal.Signals(signum).name}"

    def install(self) -> dict[int, object]:
        """Makes :meth:`handler` the handler of SIGTERM and SIGINT; returns the ones it replaced.

        Called again where Lightning has put its own SIGTERM handler in place (``Trainer._run``), so ours wins.
        Only the main thread may set handlers; elsewhere (a test's thread) this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self.handler) for signum in HANDLED}

    @staticmethod
    def restore(previous: dict[int, object]) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in previous.items():
                signal.signal(signum, handler)


STOP = StopSignals()
