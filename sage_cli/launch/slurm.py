"""The SLURM launcher, through submitit: job arrays (split to the cluster's MaxArraySize), submitted without
waiting; each job is checkpointable — on preemption or time-out it saves a checkpoint, requeues, and the
requeued job resumes from it in the same MLflow run. Queue state comes from squeue (never sacct, which
needs accounting), with a timeout so a query never hangs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import submitit
from rich.console import Console

from ..recipe import SlurmConfig
from .state import JobRecord, SweepState

QUERY_TIMEOUT_S = 10


def _query(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def max_array_size(default: int = 1001) -> int:
    out = _query(["scontrol", "show", "config"])
    for line in (out or "").splitlines():
        if line.split("=")[0].strip() == "MaxArraySize":
            try:
                return int(line.split("=", 1)[1])
            except ValueError:
                break
    return default


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id ("<array>_<task>" or plain), as far as the controller still knows it
    (``--states=all`` keeps recently ended jobs visible). Empty when SLURM cannot be asked."""
    ids = sorted({j.split("_")[0] for j in job_ids if j and not j.startswith("local:")})
    if not ids:
        return {}
    out = _query(["squeue", "--states=all", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)])
    states = {}
    for line in (out or "").splitlines():
        if "|" in line:
            job_id, state = line.strip().split("|", 1)
            states[job_id] = state
    return states


class _Preemption:
    """Turns submitit's preemption signal into a flag the training loop checks between steps, so the
    checkpoint it saves is of a whole step, then hands over to submitit to requeue."""

    def __init__(self):
        self.signal = None
        self.original = None

    def install(self):
        usr = signal.SIGUSR2
        self.original = signal.getsignal(usr)
        signal.signal(usr, self._handler)

    def _handler(self, signum, frame):
        self.signal = (signum, frame)

    def requested(self) -> bool:
        return self.signal is not None

    def hand_over(self):
        if callable(self.original):
            self.original(*self.signal)  # submitit: checkpoint() below, requeue, exit


class SweepJob(submitit.helpers.Checkpointable):
    """One sweep job as submitit runs it: `sage run` of its resolved recipe, in the sweep's environment."""

    def __init__(self, recipe_path: str, env: dict[str, str]):
        self.recipe_path, self.env = recipe_path, env

    def __call__(self) -> str:
        import sys

        from ..errors import Preempted, UserError
        from ..openmp import quiet_idle_threads
        from ..recipe import load_recipe
        from ..train.runner import run_recipe

        os.environ.update(self.env)
        preemption = _Preemption()
        preemption.install()
        try:
            recipe = load_recipe(self.recipe_path)
            quiet_idle_threads(recipe.dataset)  # before torch loads in this job's process
            outcome = run_recipe(recipe, console=Console(width=120), should_stop=preemption.requested)
        except Preempted:
            preemption.hand_over()
            raise
        except UserError as exc:  # one line in the job's log, not a traceback; SLURM marks the job FAILED
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from None
        finally:
            from ..shutdown import leave_quickly

            leave_quickly()  # submitit only records the outcome (or requeues) and ends this process after us
        return outcome.run_id


GPU_JOB_WORKERS = 8  # a GPU job's loader workers when its recipe says auto (DomainBed loads with 8 per env)


def job_resources(cfg: SlurmConfig, recipe) -> tuple[int, int]:
    """(CPUs, GPUs) per job. A GPU recipe (``slurm.gpus_per_node`` ≥ 1, or ``training.device: cuda``) gets one GPU
    and, unless ``cpus_per_task`` is given, a CPU for each loader worker plus the training process's own."""
    gpus = cfg.gpus_per_node or (1 if recipe is not None and recipe.training.device == "cuda" else 0)
    if cfg.cpus_per_task:
        return cfg.cpus_per_task, gpus
    if not gpus:
        return 2, 0
    workers = recipe.dataset.workers if recipe is not None and recipe.dataset.workers != "auto" else GPU_JOB_WORKERS
    return int(workers) + 1, gpus


def _executor(state: SweepState, cfg: SlurmConfig, cpus: int, gpus: int) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=state.dir / "slurm", cluster="slurm")
    params = dict(name=state.id, timeout_min=cfg.timeout_min, mem_gb=cfg.mem_gb, cpus_per_task=cpus,
                  slurm_array_parallelism=cfg.array_parallelism, slurm_setup=list(cfg.setup),
                  slurm_additional_parameters=dict(cfg.additional_parameters))
    if gpus:
        params["gpus_per_node"] = gpus
    if cfg.partition:
        params["slurm_partition"] = cfg.partition
    executor.update_parameters(**params)
    return executor


def submit(state: SweepState, jobs: list[JobRecord], cfg: SlurmConfig, console: Console) -> list[str]:
    """Submit ``jobs`` as arrays and return at once with their SLURM ids. A job that starts from another job of
    this submission (``after``: BOA from SAM) is submitted alone with ``--dependency=afterok:<that job>``, and
    cancelled by SLURM if that one does not finish (``--kill-on-invalid-dep=yes``)."""
    if not jobs:
        console.print("nothing to submit")
        return []
    from ..recipe import load_recipe
    from ..train.runner import GPU_EXPECTED

    # the sweep's first job stands for all: one sweep is one launch configuration
    cpus, gpus = job_resources(cfg, load_recipe(jobs[0].recipe_path))
    executor = _executor(state, cfg, cpus, gpus)
    env = {**state.job_environment(), "OMP_NUM_THREADS": str(cpus)}
    if gpus:
        env[GPU_EXPECTED] = "1"  # the job refuses to train on the CPU if SLURM's GPU is not visible to it
    submitting = {j.hash for j in jobs}
    free = [j for j in jobs if j.after not in submitting]
    chunk = max(1, max_array_size())
    for start in range(0, len(free), chunk):
        part = free[start:start + chunk]
        with executor.batch():
            submitted = [executor.submit(SweepJob(j.recipe_path, env)) for j in part]
        for record, job in zip(part, submitted):
            _submitted(record, job)
    for record in (j for j in jobs if j.after in submitting):  # in plan order: a start before what follows it
        executor.update_parameters(slurm_additional_parameters={
            **cfg.additional_parameters, "dependency": f"afterok:{state.jobs[record.after].scheduler_id}",
            "kill_on_invalid_dep": "yes"})
        _submitted(record, executor.submit(SweepJob(record.recipe_path, env)))
    state.save()
    ids = [j.scheduler_id for j in jobs]
    arrays = sorted({i.split("_")[0] for i in ids}, key=int)
    waiting = len(jobs) - len(free)
    console.print(f"submitted {len(ids)} jobs to SLURM as array(s) {', '.join(arrays)}"
                  + (f" ({waiting} of them wait for the job they start from)" if waiting else ""))
    return ids


def _submitted(record: JobRecord, job) -> None:
    record.scheduler_id = str(job.job_id)
    record.log_path = str(Path(job.paths.stdout))
    record.status = ""


def cancel(job_ids: list[str]) -> None:
    ids = sorted({j for j in job_ids if j and not j.startswith("local:")})
    if ids:
        _query(["scancel", *ids])


# SLURM's job states in the launchers' words
WORDS = {"PENDING": "queued", "CONFIGURING": "queued", "RUNNING": "running", "COMPLETING": "running",
         "COMPLETED": "finished", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
         "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "PREEMPTED": "requeued", "REQUEUED": "requeued",
         "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued", "BOOT_FAIL": "failed", "DEADLINE": "failed"}


class SlurmLauncher:
    name = "slurm"
    blocking = False

    def check(self) -> None:
        """SLURM must answer here (``sbatch`` on PATH, ``sinfo`` within seconds) before anything is recorded."""
        from ..errors import UserError

        if shutil.which("sbatch") is None:
            raise UserError("--launcher slurm: there is no SLURM here (no `sbatch` on PATH); use --launcher local, "
                            "or run the sweep on a cluster's login node")
        if _query(["sinfo", "-h", "-o", "%P"]) is None:
            raise UserError(f"--launcher slurm: SLURM does not answer here (`sinfo` failed or took over "
                            f"{QUERY_TIMEOUT_S} s); is slurmctld up?")

    def submit(self, state: SweepState, jobs: list[JobRecord], plan, console: Console) -> dict[str, str]:
        submit(state, jobs, plan.slurm, console)
        return {}

    def states(self, jobs: list[JobRecord]) -> dict[str, str]:
        return {i: WORDS.get(s, s.lower()) for i, s in queue_states([j.scheduler_id for j in jobs]).items()}

    def cancel(self, jobs: list[JobRecord]) -> None:
        cancel([j.scheduler_id for j in jobs])
