"""Ctrl-C that stops work at a safe point, and is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be, and a training job is mostly inside
libraries: a Ctrl-C that lands in an MLflow/SQLAlchemy write leaves the sqlite store locked, so marking the
run KILLED then waits on that lock; one that lands in a finalizer (SQLAlchemy's weakref callbacks during a
GC pass) is swallowed with "Exception ignored in ...", and training goes on; one between creating the run
and entering the ``try`` that marks it KILLED leaves it RUNNING for ever. All three were seen here.

``InterruptGuard`` turns the first Ctrl-C into a request that ``check()`` raises where the caller chose (a
training step's end, a launcher's poll); a second Ctrl-C raises at once, for a user who will not wait."""

from __future__ import annotations

import signal
import sys
import threading


class InterruptGuard:
    """Within the ``with`` block, Ctrl-C is recorded; ``check()`` raises KeyboardInterrupt once it was
    pressed. Installed only over Python's own handler in the main thread; otherwise (SIGINT ignored, as for
    a script's background job, or somebody else's handler) it leaves SIGINT alone and never raises."""

    def __init__(self, notice: str | None = None):
        self.notice = notice  # printed at the first Ctrl-C: what happens next
        self.presses = 0
        self.installed = False

    def __enter__(self) -> InterruptGuard:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False

    def _handler(self, signum, frame):
        self.presses += 1
        if self.presses > 1:
            raise KeyboardInterrupt
        if self.notice:
            sys.stderr.write(f"\n{self.notice} (Ctrl-C again to stop at once)\n")

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.presses:
            raise KeyboardInterrupt
