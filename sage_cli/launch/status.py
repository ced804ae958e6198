"""What each job of a sweep is doing: the launcher's record, the scheduler's queue and MLflow, combined."""

from __future__ import annotations

import os
import signal

from .state import SweepState

SLURM_WORDS = {"PENDING": "queued", "CONFIGURING": "queued", "RUNNING": "running", "COMPLETING": "running",
               "COMPLETED": "finished", "CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
               "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "PREEMPTED": "requeued", "REQUEUED": "requeued",
               "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued", "BOOT_FAIL": "failed", "DEADLINE": "failed"}
MLFLOW_WORDS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "cancelled", "RUNNING": "running",
                "SCHEDULED": "queued"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def job_statuses(state: SweepState) -> list[dict]:
    from ..track.mlflow_run import sweep_runs
    from .slurm import queue_states

    runs = {}
    for run in sweep_runs(state.tracking_uri, state.id):
        h = run.data.tags.get("sage.job_hash") or run.data.tags.get("sage.recipe_hash")
        runs[h] = run
    queue = queue_states([j.scheduler_id for j in state.jobs.values()])
    rows = []
    for h, job in state.jobs.items():
        run = runs.get(h)
        mlflow = run.info.status if run else ""
        sched = queue.get(job.scheduler_id, "")
        attempt = int(run.data.tags.get("sage.attempt", "1")) if run else 1
        if mlflow == "FINISHED" or job.status == "finished":
            status = "finished"
        elif job.cancelled:
            status = "cancelled"
        elif sched:
            status = SLURM_WORDS.get(sched, sched.lower())
            if status == "queued" and run is not None:
                status = "requeued"  # it ran before: a preempted or requeued job waiting to resume
        elif job.scheduler_id.startswith("local:") and mlflow == "RUNNING":
            status = "running" if _alive(int(job.scheduler_id.split(":")[1])) else "failed"
        elif mlflow:
            status = MLFLOW_WORDS.get(mlflow, mlflow.lower())
        else:
            status = job.status or ("queued" if job.scheduler_id else "not submitted")
        rows.append({"hash": h, "label": job.label, "status": status, "scheduler_id": job.scheduler_id,
                     "scheduler_state": sched, "mlflow": mlflow, "attempt": attempt,
                     "run_id": run.info.run_id if run else "",
                     "resumed_from": run.data.tags.get("sage.resumed_from_step", "") if run else ""})
    return rows


def cancel_sweep(state: SweepState) -> int:
    """Cancel every unfinished job: scancel or SIGINT, then mark their MLflow runs KILLED."""
    from mlflow.tracking import MlflowClient

    from .slurm import cancel

    rows = job_statuses(state)
    live = [r for r in rows if r["status"] not in ("finished", "cancelled", "failed")]
    cancel([r["scheduler_id"] for r in live])
    for r in live:
        if r["scheduler_id"].startswith("local:"):
            pid = int(r["scheduler_id"].split(":")[1])
            if _alive(pid):
                os.kill(pid, signal.SIGINT)
        state.jobs[r["hash"]].cancelled = True
        state.jobs[r["hash"]].status = "cancelled"
    client = MlflowClient(tracking_uri=state.tracking_uri)
    for r in live:
        if r["run_id"] and r["mlflow"] == "RUNNING":
            client.set_terminated(r["run_id"], "KILLED")
    if state.parent_run_id:
        client.set_terminated(state.parent_run_id, "KILLED")
    state.save()
    return len(live)
