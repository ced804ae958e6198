"""Launch a planned sweep: skip jobs whose recipe already has a FINISHED run, record the sweep, create its
parent MLflow run and the store once, then hand the jobs to a launcher."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..processes import this_process
from ..recipe import SlurmConfig
from ..track.mlflow_run import absolute_uri, finished_hashes, resolve_tracking_uri
from .launchers import LAUNCHERS
from .plan import Job
from .state import JobRecord, SweepState


@dataclass
class SweepPlan:
    id: str
    name: str
    jobs: list[Job]
    tracking_uri: str
    experiment: str
    slurm: SlurmConfig
    finished: set[str]
    max_parallel: int = 1  # local launcher: jobs at once

    @property
    def to_run(self) -> list[Job]:
        return [j for j in self.jobs if j.hash not in self.finished]


def make_plan(sweep_id: str, name: str, jobs: list[Job], tracking_uri: str | None, experiment: str,
              slurm: SlurmConfig | None, force: bool) -> SweepPlan:
    unique = list({j.hash: j for j in jobs}.values())  # the same resolved recipe twice is one job
    if not unique:
        raise UserError(f"{name}: the plan has no job (an empty list of values, seeds or test envs?)")
    uri = absolute_uri(resolve_tracking_uri(tracking_uri or unique[0].recipe.tracking.uri))
    done = set() if force else finished_hashes(uri) & {j.hash for j in unique}
    return SweepPlan(sweep_id, name, unique, uri, experiment, slurm or unique[0].recipe.slurm, done)


def job_table(plan: SweepPlan, limit: int = 200) -> Table:
    table = Table(title=f"sweep {plan.id}", title_justify="left")
    for col in ("#", "job", "hash", "state"):
        table.add_column(col)
    number = {j.hash: i for i, j in enumerate(plan.jobs)}
    for i, job in enumerate(plan.jobs[:limit]):
        waits = job.after and job.after not in plan.finished
        table.add_row(str(i), job.label, job.hash, "finished" if job.hash in plan.finished else
                      f"to run after #{number[job.after]}" if waits else "to run")
    if len(plan.jobs) > limit:
        table.add_row("…", f"{len(plan.jobs) - limit} more", "", "")
    return table


def summary_line(plan: SweepPlan) -> str:
    return f"{len(plan.jobs)} jobs ({len(plan.to_run)} to run, {len(plan.finished)} already finished)"


def record(plan: SweepPlan, launcher: str) -> SweepState:
    """Write the sweep folder (each job's resolved recipe) and create the store and parent run."""
    from mlflow.tracking import MlflowClient

    from ..track.mlflow_run import prepare_store

    to_run = {j.hash for j in plan.to_run}
    try:  # a sweep run again keeps its folder, parent run and scheduler ids
        state = SweepState.load(plan.id)
        if not to_run:  # nothing to start: a finished sweep keeps its launcher and its parent run's end
            return state
    except UserError:
        state = SweepState(plan.id, plan.name, plan.tracking_uri, plan.experiment)
    state.launcher, state.tracking_uri = launcher, plan.tracking_uri
    state.cancel_mark.unlink(missing_ok=True)  # launched again: a past `sage cancel` is over
    state.launched_by = this_process() if LAUNCHERS.get(launcher).blocking else ""
    experiment_id = prepare_store(plan.tracking_uri, plan.experiment)
    client = MlflowClient(tracking_uri=plan.tracking_uri)
    if not state.parent_run_id:
        parent = client.create_run(experiment_id, run_name=plan.id,
                                   tags={"sage.sweep_id": plan.id, "sage.sweep_parent": "true"})
        state.parent_run_id = parent.info.run_id
        client.log_param(state.parent_run_id, "jobs", len(plan.jobs))
    elif to_run:
        client.update_run(state.parent_run_id, status="RUNNING")
    jobs_dir = state.dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    for job in plan.jobs:
        recipe = job.recipe.model_copy(deep=True)
        recipe.tracking.uri, recipe.tracking.experiment = plan.tracking_uri, plan.experiment
        recipe.training.output_dir = str((state.dir / "runs").resolve())
        path = jobs_dir / f"{job.hash}.json"  # JSON is YAML too, and writes a thousand times faster
        path.write_text(json.dumps(recipe.model_dump(mode="json"), indent=1))
        previous = state.jobs.get(job.hash)
        state.jobs[job.hash] = JobRecord(job.hash, job.label, str(path),
                                         launcher if job.hash in to_run or previous is None else previous.launcher,
                                         previous.scheduler_id if previous else "",
                                         previous.log_path if previous else "",
                                         "finished" if job.hash in plan.finished else "",
                                         started=previous.started if previous else "", after=job.after)
    state.save()
    return state


def launch(plan: SweepPlan, launcher: str, max_parallel: int, console: Console) -> SweepState:
    """Record and start the sweep. Its parent MLflow run ends with it: FINISHED or FAILED when a blocking
    launcher returns, KILLED on Ctrl-C or SIGTERM; a non-blocking one's (SLURM), and one whose launcher was
    killed outright, are ended by ``sage status`` once no job is left (``status.settle_parent``)."""
    from mlflow.tracking import MlflowClient

    chosen = LAUNCHERS.get(launcher)()  # checked by the caller (``chosen.check()``) before planning
    state = record(plan, launcher)
    jobs = [state.jobs[j.hash] for j in plan.to_run]
    client = MlflowClient(tracking_uri=state.tracking_uri)
    if not jobs:
        console.print("nothing to run: every job already has a FINISHED run")
        if client.get_run(state.parent_run_id).info.status == "RUNNING":
            client.set_terminated(state.parent_run_id, "FINISHED")
        return state
    plan.max_parallel = max_parallel
    try:
        status = chosen.submit(state, jobs, plan, console)
    except KeyboardInterrupt:
        client.set_terminated(state.parent_run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(state.parent_run_id, "FAILED")
        raise
    if chosen.blocking:  # every job has ended: so has the sweep's parent run
        ended = set(status.values())
        client.set_terminated(state.parent_run_id, "FINISHED" if ended == {"finished"} else
                              "KILLED" if "cancelled" in ended else "FAILED")
    return state


def unfinished_line(state: SweepState, plan: SweepPlan) -> str:
    """One line counting the planned jobs a blocking launcher did not finish ('' when all did)."""
    words = [state.jobs[j.hash].status or "not started" for j in plan.to_run]
    left = [w for w in words if w != "finished"]
    if not left:
        return ""
    counts = ", ".join(f"{left.count(w)} {w}" for w in dict.fromkeys(left))
    return f"{len(left)} of {len(words)} jobs did not finish ({counts})"
