"""Whether a recorded process is still the one that was recorded. A PID alone is not an identity: once its
process has ended, the kernel hands the number to the next process started, and signalling it (``sage cancel``)
would stop an unrelated program. Linux's process start time (field 22 of ``/proc/<pid>/stat``, in clock ticks
since boot) tells the two apart; where ``/proc`` is missing the PID alone is all there is."""

from __future__ import annotations

import os
import platform


def _stat(pid: int) -> list[str]:
    """Fields 3… of ``/proc/<pid>/stat`` (state, ppid, …), [] when it is gone or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return []
    return stat[stat.rfind(")") + 2:].split()  # the name (field 2) may hold spaces and parentheses


def start_time(pid: int) -> str:
    """The process's start time as the kernel reports it, '' when it is gone or cannot be read."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


def alive(pid: int, started: str = "") -> bool:
    """Whether ``pid`` runs and, with ``started`` (a ``start_time`` taken when it was recorded), is still that
    process and not a later one given the same number."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: it runs
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # ended, not yet reaped (an orphan whose new parent never waits)
        return False
    return not started or start_time(pid) in ("", started)


def this_process() -> str:
    """``host:pid:start`` of the calling process, for :func:`recorded_alive` to judge later."""
    return f"{platform.node()}:{os.getpid()}:{start_time(os.getpid())}"


def recorded_alive(record: str) -> bool | None:
    """Whether the process ``this_process()`` recorded still runs; None when it ran on another host (or
    nothing was recorded), where this machine cannot tell."""
    host, _, rest = record.partition(":")
    pid, _, started = rest.partition(":")
    if host != platform.node() or not pid.isdigit():
        return None
    return alive(int(pid), started)
