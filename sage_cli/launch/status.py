"""What each job of a sweep is doing: the launcher's record, the scheduler's queue and MLflow, combined."""

from __future__ import annotations

from .launchers import launcher_of
from .state import SweepState

MLFLOW_WORDS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "cancelled", "RUNNING": "running",
                "SCHEDULED": "queued"}


def job_statuses(state: SweepState) -> list[dict]:
    from ..track.mlflow_run import sweep_runs

    runs = {run.data.tags.get("sage.recipe_hash"): run for run in sweep_runs(state.tracking_uri, state.id)}
    queue: dict[str, str] = {}
    for launcher, jobs in _by_launcher(state).items():
        queue.update(launcher.states(jobs))
    from ..processes import recorded_alive

    launcher_gone = _local(state) and recorded_alive(state.launched_by) is False
    rows, dead = [], []
    for h, job in state.jobs.items():
        run = runs.get(h)
        mlflow = run.info.status if run else ""
        sched = queue.get(job.scheduler_id, "")
        attempt = int(run.data.tags.get("sage.attempt", "1")) if run else 1
        if mlflow == "FINISHED" or job.status == "finished":
            status = "finished"
        elif job.cancelled:
            status = "cancelled"
        elif sched and sched != "gone" and mlflow not in ("FAILED", "KILLED"):  # an ended run outranks a reused pid
            status = sched
            if status == "queued" and run is not None:
                status = "requeued"  # it ran before: a preempted or requeued job waiting to resume
        elif sched == "gone" and mlflow == "RUNNING":
            status = "failed"  # its process is gone without ending its run: say so in MLflow too
            dead.append((run.info.run_id, job.scheduler_id))
        elif mlflow:
            status = MLFLOW_WORDS.get(mlflow, mlflow.lower())
        else:
            # it waits (the README's word), unless the local launcher that would start it is gone
            status = job.status or ("not started" if launcher_gone and not job.scheduler_id else "queued")
        rows.append({"hash": h, "label": job.label, "status": status, "scheduler_id": job.scheduler_id,
                     "scheduler_state": sched, "mlflow": mlflow, "attempt": attempt,
                     "run_id": run.info.run_id if run else "",
                     "resumed_from": run.data.tags.get("sage.resumed_from_step", "") if run else "",
                     # a random search's draw stopped early: finished, as far as it went
                     "pruned_at": run.data.tags.get("sage.pruned_at_step", "") if run else ""})
    if dead:
        mark_dead(state.tracking_uri, dead)
        for row in rows:
            if row["run_id"] in {run_id for run_id, _ in dead}:
                row["mlflow"] = "FAILED"
    settle_parent(state, rows, launcher_gone)
    return rows


def settle_parent(state: SweepState, rows: list[dict], launcher_gone: bool) -> None:
    """End the sweep's parent MLflow run once nothing of the sweep runs or waits any more: SLURM sweeps (whose
    launcher returns at once) and local sweeps whose launcher was killed outright (``launcher_gone``: SIGKILL,
    a lost terminal)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not state.parent_run_id:
        return
    if _local(state):
        busy = not launcher_gone or any(r["scheduler_state"] == "running" for r in rows)
    else:
        busy = any(r["status"] in ("queued", "running", "requeued") for r in rows)
    if busy:
        return
    client = MlflowClient(tracking_uri=state.tracking_uri)
    try:
        if client.get_run(state.parent_run_id).info.status != "RUNNING":
            return
    except MlflowException:
        return
    words = [r["status"] for r in rows]
    if all(w == "finished" for w in words):
        client.set_terminated(state.parent_run_id, "FINISHED")
        return
    counts = ", ".join(f"{words.count(w)} {w}" for w in sorted(set(words)) if w != "finished")
    gone = "its launcher is gone and " if _local(state) else ""
    client.set_tag(state.parent_run_id, "sage.failure", f"{gone}no job runs any more ({counts}); run the sweep "
                                                        "again to finish it")
    client.set_terminated(state.parent_run_id, "KILLED" if "cancelled" in words and "failed" not in words
                          else "FAILED")


def _local(state: SweepState) -> bool:
    return (state.launcher or "local") == "local"


def mark_dead(uri: str, dead: list[tuple[str, str]]) -> None:
    """RUNNING runs whose job is gone (SIGKILL, a crash, a node lost): FAILED, with the reason. Running the
    sweep again resumes each from its checkpoint, in the same run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for run_id, scheduler_id in dead:
        client.set_tag(run_id, "sage.failure", f"its job ({scheduler_id}) is gone without ending the run (SIGKILL "
                                               "or a crash); run the sweep again to resume it")
        client.set_terminated(run_id, "FAILED")


def _by_launcher(state: SweepState) -> dict:
    """The sweep's submitted jobs, grouped by the launcher that holds each."""
    groups: dict[str, list] = {}
    for job in state.jobs.values():
        if job.scheduler_id:
            groups.setdefault(job.launcher or state.launcher or "local", []).append(job)
    return {launcher_of(jobs[0], name): jobs for name, jobs in groups.items()}


def cancel_sweep(state: SweepState) -> int:
    """Cancel every unfinished job: scancel or SIGTERM, then mark their MLflow runs KILLED."""
    from mlflow.tracking import MlflowClient

    rows = job_statuses(state)
    live = [r for r in rows if r["status"] not in ("finished", "cancelled", "failed")]
    live_jobs = SweepState(state.id, state.name, state.tracking_uri, state.experiment,
                           jobs={r["hash"]: state.jobs[r["hash"]] for r in live}, launcher=state.launcher)
    state.cancel_mark.parent.mkdir(parents=True, exist_ok=True)
    state.cancel_mark.touch()  # first: a local launcher then starts no queued job in the place of a stopped one
    for launcher, jobs in _by_launcher(live_jobs).items():
        launcher.cancel(jobs)
    for r in live:
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
