"""Stopping a training run on SIGINT or SIGTERM without losing the steps since its last checkpoint.

Ctrl-C sends SIGINT; a scheduler, `kill`, or a cloud machine about to be preempted sends SIGTERM. While
steps run, neither ends the process at once: the signal is recorded, the step in progress finishes,
the loop writes its regular `checkpoint.pt` (the one `checkpoint_interval` writes) and raises
TrainingInterrupted. `picovlm train` then prints the command that resumes the run and exits with
128 + the signal's number (130, 143), as a shell reports a process ended by that signal, so a script
or scheduler still sees the run did not finish.

Before the first step there is nothing to lose, so a signal stops at once; a second signal while the
step finishes does too (the last checkpoint survives, as after a crash): a stuck step can always be
cut short. TrainingInterrupted is a KeyboardInterrupt, so code that catches Exception does not swallow it.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by a signal. `step` is the step saved in run_dir/checkpoint.pt, or None if the run
    stopped before its first step (nothing new to save)."""

    def __init__(self, signum: int, step: int | None = None, run_dir: Path | None = None, how: str = ""):
        self.signum, self.step, self.run_dir = signum, step, run_dir
        how = how or (f"after step {step}" if step is not None else "before the first step")
        super().__init__(f"interrupted by {signal.Signals(signum).name} {how}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """While active (a context manager), SIGINT and SIGTERM raise TrainingInterrupted at once, except
    while `deferring` is set: then the first one only sets `signum`, for the loop to act on when its
    step is done. Handlers can only be installed from the main thread; elsewhere (a run started from a
    thread) signals keep their usual effect. The previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for signum, handler in self._previous.items():
            # None: the handler was installed from C; the default is the closest thing to restore
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        return False

    def _handle(self, signum: int, _frame) -> None:
        if not self.deferring:
            raise TrainingInterrupted(signum)
        if self.signum is None:
            self.signum = signum
            return
        raise TrainingInterrupted(signum, how="twice: stopped at once, without saving the step in progress")
