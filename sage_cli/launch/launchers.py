"""The launcher interface and its registry. A launcher submits a sweep's jobs, reads their states and
cancels them; a third one (a cloud batch service, say) is one module with a class like these and one line
in ``LAUNCHERS``. Entries resolve on first use, so ``sage status`` of a local sweep never imports submitit."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console

from ..registry import Registry
from .state import JobRecord, SweepState

# the words every launcher's ``states`` speaks (``sage status`` shows them)
STATES = ("queued", "running", "requeued", "finished", "failed", "cancelled", "gone")


class Launcher(Protocol):
    name: str
    blocking: bool  # True: ``submit`` returns when every job has ended (local); False: at once (SLURM)

    def check(self) -> None:
        """Raise ``UserError`` (one line) when this launcher cannot submit from here; before anything is recorded."""

    def submit(self, state: SweepState, jobs: list[JobRecord], plan, console: Console) -> dict[str, str]:
        """Start ``jobs``; returns each job hash's state when ``blocking`` (else {})."""

    def states(self, jobs: list[JobRecord]) -> dict[str, str]:
        """Scheduler id → one of ``STATES`` ("gone": the scheduler no longer knows a job it started), for
        the jobs it can tell about; empty when the scheduler cannot be asked."""

    def cancel(self, jobs: list[JobRecord]) -> None:
        """Stop ``jobs`` (each stops after its step and marks its MLflow run KILLED where it can)."""


LAUNCHERS = Registry("launcher", {
    "local": "sage_cli.launch.local:LocalLauncher",
    "slurm": "sage_cli.launch.slurm:SlurmLauncher",
})


def launcher_of(job: JobRecord, default: str = "local") -> Launcher:
    return LAUNCHERS.get(job.launcher or default)()
