"""Ctrl-C that stops work at a safe point, and is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be, and a training job is mostly inside
libraries: a Ctrl-C that lands in an MLflow/SQLAlchemy write leaves the sqlite store locked, so marking the
run KILLED then waits on that lock; one that lands in a finalizer (SQLAlchemy's weakref callbacks during a
GC pass) is swallowed with "Exception ignored in ...", and training goes on; one between creating the run
and entering the ``try`` that marks it KILLED leaves it RUNNING for ever. All three were seen here.

``InterruptGuard`` turns the first Ctrl-C into a request that ``check()`` raises where the caller chose (a
training step's end, a launcher's poll); a second Ctrl-C raises at once, for a user who will not wait.
SIGTERM (what ``kill``, ``scancel`` and most schedulers send first) is taken as a first Ctrl-C. Inside
``recording()`` — a finished run being written to its store — no signal raises: the record is completed
first, however often Ctrl-C is pressed."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class InterruptGuard:
    """Within the ``with`` block, Ctrl-C is recorded; ``check()`` raises KeyboardInterrupt once it was
    pressed. Installed only over Python's own handler in the main thread; otherwise (SIGINT ignored, as for
    a script's background job, or somebody else's handler) it leaves SIGINT alone and never raises."""

    def __init__(self, notice: str | None = None):
        self.notice = notice  # printed at the first Ctrl-C: what happens next
        self.presses = 0
        self.installed = False
        self.holding = False
        self.previous: dict = {}

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:
                    self.previous[sig] = default
                    signal.signal(sig, self._handler)
            self.installed = signal.SIGINT in self.previous
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous, self.installed = {}, False

    def _handler(self, signum, frame):
        self.presses += 1
        if self.holding:
            if self.presses == 1 or signum == signal.SIGINT:
                sys.stderr.write("\nrecording the finished run first; one moment\n")
            return
        if self.presses > 1:
            raise KeyboardInterrupt
        if self.notice:
            what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            sys.stderr.write(f"\n{what}: {self.notice} (Ctrl-C again to stop at once)\n")

    @contextmanager
    def recording(self):
        """No signal interrupts what runs inside: a finished run's record is written whole."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed."""
        if self.presses:
            raise KeyboardInterrupt
