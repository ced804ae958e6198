"""The local launcher: a pool of ``max_parallel`` `sage run` processes with a live table. Ctrl-C stops the
running jobs cleanly (each marks its MLflow run KILLED; its checkpoint stays for the next attempt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..interrupts import InterruptGuard
from .state import JobRecord, SweepState

STYLE = {"queued": "dim", "running": "yellow", "finished": "green", "failed": "red", "cancelled": "magenta"}


def _table(state: SweepState, status: dict[str, str]) -> Table:
    table = Table(title=f"sweep {state.id} (local)", title_justify="left")
    for col in ("job", "hash", "status"):
        table.add_column(col)
    for h, st in status.items():
        table.add_row(state.jobs[h].label, h, f"[{STYLE.get(st, '')}]{st}[/]")
    counts = {s: list(status.values()).count(s) for s in STYLE if s in status.values()}
    table.caption = " · ".join(f"{n} {s}" for s, n in counts.items())
    return table


def _start(state: SweepState, job: JobRecord, threads: int) -> subprocess.Popen:
    from .sweep import job_environment

    logs = state.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    job.log_path = str(logs / f"{job.hash}.log")
    env = {**os.environ, **job_environment(state), "OMP_NUM_THREADS": str(threads), "COLUMNS": "120"}
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sage_cli", "run", job.recipe_path], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    job.scheduler_id = f"local:{proc.pid}"
    return proc


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT: each job stops after its current step and marks its MLflow run KILLED itself. A job still
    busy after 30 s (a long evaluation) gets a second SIGINT, which stops it at once; SIGKILL 10 s later."""
    for sig, grace in ((signal.SIGINT, 30), (signal.SIGINT, 10), (signal.SIGKILL, 5)):
        procs = [p for p in procs if p.poll() is None]
        for proc in procs:
            proc.send_signal(sig)
        deadline = time.time() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass


def run_local(state: SweepState, jobs: list[JobRecord], max_parallel: int, console: Console) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // max(1, max_parallel))
    status = {j.hash: "queued" for j in jobs}
    pending, running = list(jobs), {}
    try:
        with InterruptGuard("stopping the running jobs") as interrupts, \
                Live(_table(state, status), console=console, refresh_per_second=4, transient=False) as live:
            while pending or running:
                while pending and len(running) < max_parallel:
                    job = pending.pop(0)
                    running[job.hash] = (job, _start(state, job, threads))
                    status[job.hash] = "running"
                    state.save()
                for h, (job, proc) in list(running.items()):
                    if proc.poll() is not None:
                        status[h] = job.status = "finished" if proc.returncode == 0 else "failed"
                        del running[h]
                        state.save()
                live.update(_table(state, status))
                time.sleep(0.2)
                interrupts.check()  # Ctrl-C is obeyed here, never between starting a job and recording it
        console.print()
    except KeyboardInterrupt:
        _stop([proc for _job, proc in running.values()])
        for h, (job, _proc) in running.items():
            status[h] = job.status = "cancelled"
        for job in pending:
            status[job.hash] = job.status = "cancelled"
        state.save()
        console.print(_table(state, status))
        raise
    return status
