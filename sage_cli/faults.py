"""A fault-injection point for the reliability tests: ``SAGE_PAUSE_AT=PHASE[@POSITION][:SECONDS]`` makes a
run print ``sage: paused at PHASE`` to stderr at that phase (``startup``: the MLflow run just created;
``checkpoint``: a checkpoint just saved, the one at POSITION if given; ``finish``: training done, the run
not yet recorded) and sleep there (60 s by default), so that a test can kill it at exactly that moment."""

from __future__ import annotations

import os
import sys
import time


def pause_at(phase: str, position: int | None = None) -> None:
    spec = os.environ.get("SAGE_PAUSE_AT")
    if not spec:
        return
    where, _, seconds = spec.partition(":")
    name, _, at = where.partition("@")
    if name != phase or (at and position is not None and int(at) != position):
        return
    sys.stderr.write(f"sage: paused at {phase}\n")
    sys.stderr.flush()
    deadline = time.time() + float(seconds or 60)
    while time.time() < deadline:  # short sleeps: a signal handler runs between them
        time.sleep(0.05)
