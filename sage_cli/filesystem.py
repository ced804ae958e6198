"""Whether a folder can really be written: permission bits say nothing when running as root (CI, containers),
and a path under a regular file fails only when written to."""

from __future__ import annotations

import os
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
