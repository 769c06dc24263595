"""A stalled run ends itself: a daemon thread that notices when no step has completed for too long.

Why a thread and ``os._exit``: a hang is the main thread blocked inside C code (a CUDA or NCCL call, a loader
queue, a read from a dead disk). No exception or signal handler written in Python runs there, and the GIL is
released while it waits, so this thread still runs. It writes every thread's Python stack
(``faulthandler.dump_traceback``) and the last progress to ``<dir>/rank<k>-<time>.txt``, says so in one paragraph,
runs the registered last words (summary "stalled", the restart count; each bounded in time), kills the processes
this one started (loader workers, the DDP ranks Lightning's launcher started) and ends the process with
``os._exit``: no atexit handler, no teardown, nothing that could wait on the blocked thread. The checkpoint
files are never touched. A collective that times out (``torch.distributed`` raises after the process group's
timeout) gets the same exit through :func:`exit_stalled`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resnet_ffcv.run.stop_signals import STALLED_EXIT_CODE

LAST_WORDS_SECONDS = 30.0  # how long all last words together may take (an S3 upload of the count included)


@dataclass
class Progress:
    """The last completed unit of work (a training step, a validation batch) as the main thread reported it."""

    what: str = "nothing yet (start-up)"
    step: int = 0
    epoch: int = 0
    at: float = 0.0  # time.monotonic()
    wall: float = 0.0  # time.time(), for the report


def kill_descendants(grace_seconds: float = 0.5) -> list[int]:
    """SIGKILLs every process this one started, children's children included (a stopped one too: SIGKILL needs
    no cooperation); returns their pids. psutil walks /proc; an already gone process is skipped."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGKILL)
    psutil.wait_procs(children, timeout=grace_seconds)  # reaped, so `ps` shows no zombie of ours either
    return [child.pid for child in children]


def run_last_words(last_words: list[Callable[[], None]], budget: float = LAST_WORDS_SECONDS) -> None:
    """Runs each callable in a daemon thread, all within ``budget`` seconds: one that blocks is abandoned."""
    deadline = time.monotonic() + budget
    for words in last_words:
        worker = threading.Thread(target=_quietly, args=(words,), daemon=True, name="watchdog-last-words")
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))


def _quietly(words: Callable[[], None]) -> None:
    try:
        words()
    except Exception as error:  # a failed last word must not keep the process alive
        _say(f"watchdog: {getattr(words, '__name__', words)} failed: {error}")


def _say(text: str) -> None:
    """Straight to fd 2: the blocked main thread may hold ``sys.stderr``'s lock."""
    with contextlib.suppress(OSError):
        os.write(2, (text.rstrip("\n") + "\n").encode())


def exit_stalled(paragraph: str, last_words: list[Callable[[], None]], exit_code: int = STALLED_EXIT_CODE):
    """The common end of a stall: the paragraph, the last words, the child processes killed, ``os._exit``."""
    _say(paragraph)
    # Flushing waits for the stream's lock, which the blocked thread may hold: a last word, bounded like the rest.
    run_last_words([*last_words, sys.stdout.flush, sys.stderr.flush])
    kill_descendants()
    os._exit(exit_code)


class StallWatchdog:
    """Calls :meth:`fire` when :meth:`beat` has not been called for ``allowance`` seconds.

    ``allowance`` is the stall bound, or a longer one the main thread sets with :meth:`expect` before work that
    is legitimately slow once (the first step: compile and the first data read).

    Args:
        stall_seconds: the bound between two beats.
        stall_dir: where the stack files go.
        rank: this process's global rank (in the file name).
        on_stall: ``(stack_file, progress, waited) -> (paragraph, last_words, exit_code)``: what to say and do.
        poll_seconds: how often the thread looks (a tenth of the bound, at most 5 s).
    """

    def __init__(self, stall_seconds: float, stall_dir: Path, rank: int, on_stall, poll_seconds: float | None = None):
        self.stall_seconds = stall_seconds
        self.stall_dir = Path(stall_dir)
        self.rank = rank
        self.on_stall = on_stall
        self.poll_seconds = poll_seconds or min(5.0, max(0.05, stall_seconds / 10))
        self.progress = Progress(at=time.monotonic(), wall=time.time())
        self.allowance = stall_seconds
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, what: str, step: int, epoch: int) -> None:
        """Work completed: the stall bound applies from now (one assignment; no lock, no syscall)."""
        self.progress = Progress(what, step, epoch, time.monotonic(), time.time())
        self.allowance = self.stall_seconds

    def expect(self, seconds: float, what: str) -> None:
        """The next unit of work may take up to ``seconds`` from now (e.g. the first step)."""
        self.progress = Progress(what, self.progress.step, self.progress.epoch, time.monotonic(), time.time())
        self.allowance = max(seconds, self.stall_seconds)

    def start(self) -> None:
        if self._thread is None:
            self._closing.clear()
            self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_seconds + 1)
            self._thread = None

    def _watch(self) -> None:
        while not self._closing.wait(self.poll_seconds):
            progress, allowance = self.progress, self.allowance
            waited = time.monotonic() - progress.at
            if waited > allowance:
                self.fire(progress, waited)

    def fire(self, progress: Progress, waited: float) -> None:
        stack_file = self.write_stacks(progress, waited)
        paragraph, last_words, exit_code = self.on_stall(stack_file, progress, waited)
        exit_stalled(paragraph, last_words, exit_code)

    def write_stacks(self, progress: Progress, waited: float) -> Path | None:
        """``rank<k>-<time>.txt``: the last progress, then every thread's stack; None if it cannot be written."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.stall_dir / f"rank{self.rank}-{stamp}.txt"
        try:
            self.stall_dir.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as file:
                file.write(
                    f"rank {self.rank} (pid {os.getpid()}) stalled: no progress for {waited:.1f} s "
                    f"(allowed {self.allowance:.1f} s)\n"
                    f"last progress: {progress.what}, step {progress.step}, epoch {progress.epoch}, at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(progress.wall))}\n"
                    f"dumped at {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
                    "Python stacks of every thread (most recent call first):\n"
                )
                file.flush()
                faulthandler.dump_traceback(file, all_threads=True)
            return path
        except OSError as error:
            _say(f"watchdog: could not write {path} ({error}); the stacks follow on stderr")
            faulthandler.dump_traceback(sys.__stderr__ or 2, all_threads=True)
            return None


# What torch.distributed says when a collective outlives the process group's timeout: gloo raises a
# RuntimeError "[...unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation to complete" (seen here,
# torch 2.14); NCCL with async error handling a DistBackendError "Watchdog caught collective operation timeout".
COLLECTIVE_TIMEOUT_MARKERS = ("timed out waiting", "collective operation timeout")


def is_collective_timeout(error: BaseException | None) -> bool:
    """True for a collective's timeout error, here or among the exception's causes."""
    for _ in range(10):
        if error is None:
            return False
        if isinstance(error, RuntimeError) and any(m in str(error).lower() for m in COLLECTIVE_TIMEOUT_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False
