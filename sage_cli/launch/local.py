"""The local launcher: a pool of ``max_parallel`` `sage run` processes with a live table; a job that starts from
another (``JobRecord.after``: BOA from SAM) waits for it, and is skipped when it did not finish. Ctrl-C (or
`sage cancel`) stops the running jobs cleanly (each marks its MLflow run KILLED; its checkpoint stays for
the next attempt)."""

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
from ..processes import alive, start_time
from .state import JobRecord, SweepState

STYLE = {"queued": "dim", "running": "yellow", "finished": "green", "failed": "red", "cancelled": "magenta",
         "skipped": "red"}
ENDED_BADLY = ("failed", "cancelled", "skipped")  # a job that starts from one of these is skipped


def _table(state: SweepState, status: dict[str, str]) -> Table:
    table = Table(title=f"sweep {state.id} (local)", title_justify="left")
    for col in ("job", "hash", "status"):
        table.add_column(col)
    for h, st in status.items():
        table.add_row(state.jobs[h].label, h, f"[{STYLE.get(st, '')}]{st}[/]")
    counts = {s: list(status.values()).count(s) for s in STYLE if s in status.values()}
    table.caption = " · ".join(f"{n} {s}" for s, n in counts.items())
    return table


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES where set (empty or -1: none), else nvidia-smi's."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = []
        for part in (p.strip() for p in given.split(",")):
            if not part or part == "-1":
                break  # CUDA stops reading the list at the first entry it cannot use
            ids.append(part)
        return ids
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.split() if proc.returncode == 0 else []


def _least_used(gpus: list[str], in_use: list[str]) -> str | None:
    """The GPU running the fewest of this sweep's jobs (round-robin while they all run as many)."""
    return min(gpus, key=lambda g: (in_use.count(g), gpus.index(g))) if gpus else None


def _start(state: SweepState, job: JobRecord, threads: int, gpu: str | None = None) -> subprocess.Popen:
    logs = state.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    job.log_path = str(logs / f"{job.hash}.log")
    env = {**os.environ, **state.job_environment(), "OMP_NUM_THREADS": str(threads), "COLUMNS": "120"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu  # one GPU per job: N parallel jobs spread over the visible GPUs
    with open(job.log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sage_cli", "run", job.recipe_path], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    job.scheduler_id = f"local:{proc.pid}"
    job.started = start_time(proc.pid)  # with the PID, the process's identity: a reused PID is not the job
    return proc


class _Process:
    """A job's process known by its recorded PID and start time (`sage cancel` runs in another process than
    the launcher). Once the job has ended, a later process given the same PID is never signalled."""

    def __init__(self, pid: int, started: str = ""):
        self.pid, self.started = pid, started

    def poll(self):
        return None if alive(self.pid, self.started) else 0

    def send_signal(self, sig) -> None:
        if not alive(self.pid, self.started):
            return
        try:
            os.kill(self.pid, sig)
        except OSError:
            pass


def _stop(procs) -> None:
    """SIGTERM: each job stops after its current step and marks its MLflow run KILLED itself. A job still
    busy after 30 s (a long evaluation) gets a second SIGTERM, which stops it at once; SIGKILL 10 s later.
    SIGTERM, not SIGINT: a sweep started in the background of a script (``sage sweep … &``) hands its jobs
    SIGINT ignored, and an ignored signal stays ignored; SIGTERM is never inherited ignored that way.
    ``procs``: our own children (subprocess.Popen, reaped as they exit) or ``_Process`` ids."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        procs = [p for p in procs if p.poll() is None]
        for proc in procs:
            proc.send_signal(sig)
        deadline = time.time() + grace
        while procs and time.time() < deadline:
            procs = [p for p in procs if p.poll() is None]
            time.sleep(0.1)


def _pid(job: JobRecord) -> int | None:
    if job.scheduler_id.startswith("local:"):
        return int(job.scheduler_id.split(":")[1])
    return None


class LocalLauncher:
    name = "local"
    blocking = True

    def check(self) -> None:
        """Nothing to ask: this machine runs the jobs."""

    def submit(self, state: SweepState, jobs: list[JobRecord], plan, console: Console) -> dict[str, str]:
        return run_local(state, jobs, plan.max_parallel, console)

    def states(self, jobs: list[JobRecord]) -> dict[str, str]:
        out = {}
        for job in jobs:
            pid = _pid(job)
            if pid is not None:
                out[job.scheduler_id] = "running" if _Process(pid, job.started).poll() is None else "gone"
        return out

    def cancel(self, jobs: list[JobRecord]) -> None:
        _stop([_Process(_pid(job), job.started) for job in jobs if _pid(job) is not None])


def run_local(state: SweepState, jobs: list[JobRecord], max_parallel: int, console: Console) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // max(1, max_parallel))
    gpus = visible_gpus()
    status = {j.hash: "queued" for j in jobs}
    pending, running, cancelled = list(jobs), {}, False
    try:
        with InterruptGuard("stopping the running jobs") as interrupts, \
                Live(_table(state, status), console=console, refresh_per_second=4, transient=False) as live:
            while pending or running:
                if not cancelled and state.cancel_mark.exists():  # `sage cancel`: it stops the running jobs
                    cancelled = True
                    for job in pending:
                        status[job.hash], job.status, job.cancelled = "cancelled", "cancelled", True
                    pending = []
                    state.save()
                for job in [j for j in pending if status.get(j.after) in ENDED_BADLY]:
                    pending.remove(job)  # its start will never finish: nothing to explore from
                    status[job.hash] = job.status = "skipped"
                    state.save()
                while len(running) < max_parallel:
                    job = next((j for j in pending if status.get(j.after, "finished") == "finished"), None)
                    if job is None:  # nothing left, or every pending job waits for its start
                        break
                    pending.remove(job)
                    gpu = _least_used(gpus, [g for _j, _p, g in running.values()])
                    running[job.hash] = (job, _start(state, job, threads, gpu), gpu)
                    status[job.hash] = "running"
                    state.save()
                for h, (job, proc, _gpu) in list(running.items()):
                    if proc.poll() is not None:
                        ended = "finished" if proc.returncode == 0 else "cancelled" if cancelled else "failed"
                        status[h] = job.status = ended
                        job.cancelled = job.cancelled or ended == "cancelled"
                        del running[h]
                        if not console.is_terminal:  # a log: the live table draws nothing, say each end
                            done = sum(1 for v in status.values() if v not in ("queued", "running"))
                            console.print(f"[{done}/{len(status)}] {job.label} ({h}): {ended}", markup=False,
                                          highlight=False, soft_wrap=True)
                        state.save()
                live.update(_table(state, status))
                time.sleep(0.2)
                interrupts.check()  # Ctrl-C is obeyed here, never between starting a job and recording it
        console.print()
    except KeyboardInterrupt:
        _stop([proc for _job, proc, _gpu in running.values()])
        for h, (job, _proc, _gpu) in running.items():
            status[h] = job.status = "cancelled"
        for job in pending:
            status[job.hash] = job.status = "cancelled"
        state.save()
        console.print(_table(state, status))
        raise
    return status
