"""Whether a folder can really be written: permission bits say nothing when running as root (CI, containers),
and a path under a regular file fails only when written to."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def write_problem(folder: Path) -> str | None:
    """None if ``folder`` (created if missing) takes a file, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".sage-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


@contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (fcntl on ``path``, created if missing), waited for."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
