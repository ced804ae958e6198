"""``sage run``: a validated recipe → data → training → one MLflow run, with a progress bar and a summary.

Order matters for users: everything that can be wrong with their input (recipe, data) is checked before
the MLflow run exists, so bad input leaves nothing behind.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import Preempted, Pruned, Stopped, TrainingDiverged, UserError
from ..processes import alive
from ..recipe import Recipe
from ..track.mlflow_run import (
    MlflowRun,
    experiment_id_for,
    quiet_migrations,
    resolve_tracking_uri,
    run_status,
)
from ..track.spool import SPOOL_NAME, Spool
from ..track.store import fail_fast_requests


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    status: str
    summary: str = ""  # the line the CLI prints (the held-out accuracy, or the MTL result)
    metrics: dict | None = None
    spooled: int = 0  # writes kept in the run folder for a server that was unreachable


def search_metrics(ckpt, data) -> dict[str, float]:
    """What a random search judges a draw by at a checkpoint: DomainBed's training-domain validation accuracy."""
    from ..search.prune import VAL_METRIC
    from .dg import training_domain_acc

    return {VAL_METRIC: training_domain_acc(ckpt.metrics, list(data.train_envs))}


def judge_draw(recipe: Recipe, client, experiment_id: str, run_id: str, step: int, metrics: dict, total: int) -> None:
    """Raise ``Pruned`` when ``sweep.prune``'s rule stops this draw at ``step`` (never at the last step)."""
    from ..search.prune import VAL_METRIC, peer_values, verdict

    if step >= total - 1:
        return
    peers = peer_values(client, experiment_id, recipe, run_id, step)
    why = verdict(recipe.sweep.prune, recipe.sweep.asha_eta, metrics[VAL_METRIC], peers,
                  step // recipe.training.checkpoint_freq)
    if why:
        raise Pruned(step, why)


def scheduler_job_id() -> str:
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID") or f"local:{os.getpid()}"


def sweep_tags() -> dict[str, str]:
    """Tags that tie a run to its sweep, from the environment a launcher gives the job."""
    sweep = os.environ.get("SAGE_SWEEP_ID")
    if not sweep:
        return {}
    tags = {"sage.sweep_id": sweep, "sage.scheduler_job_id": scheduler_job_id(),
            "sage.attempt": str(int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1)}
    if os.environ.get("SAGE_PARENT_RUN_ID"):
        tags["mlflow.parentRunId"] = os.environ["SAGE_PARENT_RUN_ID"]
    return tags


def run_tags(recipe: Recipe) -> dict[str, str]:
    return {
        **sweep_tags(),
        "sage.recipe_hash": recipe.hash(),
        "sage.hparams_hash": recipe.hparams_hash(),
        "sage.label": recipe.label,
        "sage.kind": recipe.kind,
        "sage.dataset": recipe.dataset.name,
        "sage.method": recipe.optimizer.label,
        "sage.objective": recipe.objective.name,
        "sage.test_envs": ",".join(map(str, recipe.dataset.test_envs)),
        "sage.seed": str(recipe.training.seed),
        **({"sage.draw": str(recipe.tracking.draw), "sage.searched": ",".join(recipe.tracking.searched)}
           if recipe.tracking.draw is not None else {}),
        "sage.host": platform.node(),
        "sage.pid": str(os.getpid()),  # with the host: a RUNNING run whose process is gone is recognised
        **({"sage.cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}
           if "CUDA_VISIBLE_DEVICES" in os.environ else {}),
    }


def run_name(recipe: Recipe) -> str:
    """What MLflow's run list shows: the report row, the dataset, the held-out envs and the seed (a sweep's
    children were all called by the recipe's name)."""
    where = f" · env {','.join(map(str, recipe.dataset.test_envs))}" if recipe.kind == "dg" else ""
    return f"{recipe.label} · {recipe.dataset.name}{where} · seed {recipe.training.seed}"


def _say(console: Console, line: str) -> None:
    """One line as written: no wrapping (a log keeps it whole), no markup or highlighting of paths and numbers."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)


# the per-domain engine's paths (optim/per_domain.py), as the console says them once the first step took one
PATH_LINES = {"one-backward": "one backward pass for all domains (checked against the exact path at the first step)",
              "exact": "one backward pass per domain (exact path)"}
GPU_EXPECTED = "SAGE_EXPECT_GPU"  # set by a launcher that gave the job a GPU


def check_gpu(recipe: Recipe) -> None:
    """A run that asked for a GPU (``training.device: cuda``, or a job launched with one) and sees none fails
    in one line instead of training on the CPU."""
    asked = recipe.training.device == "cuda" or os.environ.get(GPU_EXPECTED) == "1"
    if not asked:
        return
    import torch

    if not torch.cuda.is_available():
        why = "training.device: cuda" if recipe.training.device == "cuda" else "this job was given a GPU"
        raise UserError(f"{why}, but no CUDA device is visible here (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); not training on the CPU")


def protocol_for(recipe: Recipe):
    """The training protocol of the recipe's kind of dataset (DG or MTL), from the catalog."""
    from ..catalog import PROTOCOLS

    return PROTOCOLS.get(recipe.kind)


def checkpoint_path_for(recipe: Recipe) -> Path:
    return Path(recipe.training.output_dir) / recipe.hash() / "checkpoint.pt"


def recover_dead_runs(client, experiment_id: str, recipe_hash: str, resumed: str | None, also: str = "") -> None:
    """RUNNING runs of this identity whose process is gone (SIGKILL, a crash): the one this checkpoint
    resumes is tagged and continued; the others are marked FAILED with the reason (and ``also``, what else is
    known). The caller holds the run folder's lock, so the process that wrote its checkpoint is dead; a run
    elsewhere is judged by its PID."""
    here = platform.node()
    found = client.search_runs([experiment_id], f"tags.`sage.recipe_hash` = '{recipe_hash}' and "
                                                "attributes.status = 'RUNNING'", max_results=100)
    for r in found:
        host, pid = r.data.tags.get("sage.host", "?"), r.data.tags.get("sage.pid", "")
        why = f"process {pid or '?'} on {host} died before recording the run (SIGKILL or a crash)"
        why += f"; {also}" if also else ""
        if r.info.run_id == resumed:
            client.set_tag(r.info.run_id, "sage.recovered", f"{why}; resumed by process {os.getpid()} on {here}")
        elif host == here and pid.isdigit() and not alive(int(pid)):
            client.set_tag(r.info.run_id, "sage.failure", why)
            client.set_terminated(r.info.run_id, "FAILED")


def run_recipe(recipe: Recipe, console: Console | None = None, restart: bool = False,
               should_stop=None, wait: bool = False, force: bool = False) -> RunOutcome:
    """Train ``recipe`` as one MLflow run. An unfinished checkpoint of the same recipe (same hash) is
    resumed, in the same MLflow run; ``restart`` discards it instead. One process at a time trains a recipe
    (``wait``: wait for the one that does instead of refusing). An identity that already has a FINISHED run
    is not trained again (a sweep would count the two runs as one job) unless ``force``."""
    from ..faults import pause_at
    from ..models.weights import prepare
    from ..track.store import check_store
    from .locks import RunLock

    console = console or Console()
    pause_at("load")  # fault injection (tests): a signal here comes before any MLflow run exists
    check_gpu(recipe)  # found now, not as a traceback in a FAILED run, nor as a silent run on the CPU
    protocol = protocol_for(recipe)
    data = protocol.load(recipe)  # data errors surface before any MLflow run exists
    weights = prepare(recipe.backbone)  # so do missing weights; a tag is downloaded now when online
    if weights is not None:
        _say(console, weights.line())
    uri = resolve_tracking_uri(recipe.tracking.uri)
    check_store(uri)  # unreachable, unwritable or corrupt: one line, before any run (or run folder) exists
    if uri.startswith(("http://", "https://")):  # a server that goes away: a write fails fast and is kept
        fail_fast_requests()
    ckpt_path = checkpoint_path_for(recipe)
    with RunLock(ckpt_path.parent, wait, notice=console.print):  # and so does an unwritable output_dir
        return _run_locked(recipe, protocol, data, weights, uri, ckpt_path, console, restart, should_stop, force)


def finished_run(client, experiment_id: str, recipe_hash: str) -> str | None:
    """The newest FINISHED run of this identity in the experiment, if any."""
    found = client.search_runs([experiment_id], f"tags.`sage.recipe_hash` = '{recipe_hash}' and "
                                                "attributes.status = 'FINISHED'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def log_line(at: int, completed: float, first: int, total: int, began: float, status: str) -> str:
    """One checkpoint's progress as a line of text: where, how it goes, since when, how long still."""
    elapsed = time.monotonic() - began
    rate = (completed - first) / elapsed if elapsed > 0 and completed > first else 0.0
    eta = (total - completed) / rate if rate else 0.0
    clock = lambda s: time.strftime("%H:%M:%S", time.gmtime(s))  # noqa: E731
    return f"step {at} ({int(completed)}/{total}) · {status} · elapsed {clock(elapsed)} · ETA {clock(eta)}"


def _run_locked(recipe, protocol, data, weights, uri, ckpt_path, console, restart, should_stop,
                force=False) -> RunOutcome:
    from mlflow.tracking import MlflowClient

    from ..faults import pause_at
    from ..interrupts import InterruptGuard
    from ..track.store import store_lock
    from .checkpoint import remove_checkpoint, results_jsonl, results_path, verified_meta
    from .loop import runtime_for, train

    if restart:
        remove_checkpoint(ckpt_path)
    damaged = None
    try:
        meta, notice = verified_meta(ckpt_path)  # a damaged checkpoint: the previous one, or --restart
    except UserError as exc:
        meta, notice, damaged = None, None, exc
    if notice:
        _say(console, notice)
    if meta is not None and meta.get("recipe_hash", recipe.hash()) != recipe.hash():
        raise UserError(f"the checkpoint {ckpt_path} was saved for another recipe (identity "
                        f"{meta.get('recipe_hash')}, run {meta.get('run_id')}), not for this one ({recipe.hash()}): "
                        "the run folder was copied or moved; put it back, or pass --restart to train anew")
    if meta is not None and meta.get("tracking_uri") != uri:
        raise UserError(f"the checkpoint {ckpt_path} belongs to run {meta.get('run_id')} in "
                        f"{meta.get('tracking_uri')}: resume it there, or pass --restart to train anew into {uri}")
    quiet_migrations()
    with store_lock(uri):  # the first creation of a store and its experiment, one process at a time
        client = MlflowClient(tracking_uri=uri)
        experiment_id = experiment_id_for(client, recipe.tracking.experiment)
    if damaged is not None:  # nothing to resume: the dead run it belonged to must not stay RUNNING
        recover_dead_runs(client, experiment_id, recipe.hash(), None, f"its checkpoint is damaged ({damaged})")
        raise damaged
    spool = Spool(ckpt_path.parent / SPOOL_NAME)
    replayed = meta is not None and len(spool) > 0
    if replayed:  # what a past process could not send, first: its run may be recorded whole by it
        spool.replay(lambda _uri: client)
    status = run_status(client, meta.get("run_id")) if meta else None
    if meta is not None and meta.get("finished") and status in (None, "FINISHED"):
        remove_checkpoint(ckpt_path)  # that run is recorded whole: this is a new run of the recipe
        if replayed and status == "FINISHED":  # ...recorded by its kept records just now: that was the point
            line = (f"run {meta['run_id']} had trained to the end while the MLflow server was away; its kept "
                    "records are now sent and it is FINISHED (nothing trained again)")
            return RunOutcome(meta["run_id"], uri, "FINISHED", line)
        meta = None
    earlier = finished_run(client, experiment_id, recipe.hash()) if meta is None and not force else None
    if earlier is not None:
        line = (f"this recipe (identity {recipe.hash()}) already has a FINISHED run, {earlier}: not training it "
                "again (--force trains a new run)")
        return RunOutcome(earlier, uri, "FINISHED", line)
    completing = bool(meta and meta.get("finished"))  # trained to the end, never recorded: record it now
    recover_dead_runs(client, experiment_id, recipe.hash(), meta.get("run_id") if meta else None)
    first_step = meta["step"] + 1 if meta else 0
    (ckpt_path.parent / "recipe.yaml").write_text(recipe.to_yaml())  # what `sage diagnose CHECKPOINT` rebuilds
    history = []

    runtime = runtime_for(recipe, protocol, data)
    _say(console, runtime.describe())

    searching = recipe.kind == "dg" and recipe.tracking.draw is not None  # a random search's draw

    paths_said = set()

    def on_checkpoint(ckpt):
        history.append(ckpt)
        if ckpt.tags:
            run.set_tags(ckpt.tags)
            path = ckpt.tags.get("sage.per_domain_path")
            if path and path not in paths_said:  # known after the first step only: said then, beside the start line
                paths_said.add(path)
                _say(console, f"per-domain gradients: {PATH_LINES.get(path, path)}")
        metrics = {**ckpt.metrics, **(search_metrics(ckpt, data) if searching else {})}
        run.log_metrics(metrics, step=ckpt.step)
        # every row so far (the loop appends it to the run folder's file): an interrupted run keeps them
        run.log_file(results_path(ckpt_path))
        if searching and recipe.sweep.prune != "none":
            judge_draw(recipe, client, experiment_id, run.run_id, ckpt.step, metrics, protocol.total_steps(recipe, data))

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=False)
    # Ctrl-C stops training at the next step (never inside an MLflow write), and the run is marked KILLED
    with InterruptGuard("stopping after this step; the checkpoint is kept for the next run") as interrupts:
        with store_lock(uri):
            run = MlflowRun(uri, recipe.tracking.experiment, run_name(recipe), run_tags(recipe),
                            resume_run_id=meta.get("run_id") if meta else None,
                            spool=ckpt_path.parent / SPOOL_NAME)
        try:
            interrupts.check()  # pressed while the run was being created
            run.set_tags(runtime.tags())
            if completing:
                run.set_tags({"sage.pid": os.getpid(), "sage.host": platform.node()})
                console.print(f"finishing run {run.run_id}: trained to the end, not yet recorded ({ckpt_path})")
            elif meta is not None:
                run.set_tags({"sage.resumed_from_step": first_step, "sage.pid": os.getpid(),
                              "sage.host": platform.node(), **sweep_tags()})
                run.log_metrics({"resumed_from_step": first_step}, step=first_step)
                console.print(f"resuming from step {first_step} ({ckpt_path})")
            else:
                run.log_params(recipe.acting())  # not SGD's momentum under Adam, nor MTL epochs on a DG run
                if weights is not None:
                    run.set_tags(weights.tags())
                run.log_text(recipe.to_yaml(), "recipe.yaml")
            pause_at("startup")
            with progress:
                total = protocol.total_steps(recipe, data)
                done = protocol.first_step(recipe, data, first_step)
                task = progress.add_task("training", total=total, completed=done, status="")

                def on_step(step):
                    interrupts.check()
                    progress.update(task, completed=step + 1)

                began = time.monotonic()

                def on_ckpt(ckpt):
                    on_checkpoint(ckpt)
                    line = protocol.status(ckpt, data)
                    progress.update(task, status=line)
                    if not console.is_terminal:  # a log (SLURM, `sage logs`, a redirect): the bar draws nothing
                        _say(console, log_line(ckpt.step, progress.tasks[0].completed, done, total, began, line))

                result = train(recipe, protocol, data=data, on_checkpoint=on_ckpt, progress=on_step,
                               checkpoint_path=ckpt_path, extra_state={"run_id": run.run_id, "tracking_uri": uri},
                               should_stop=should_stop, runtime=runtime)
        except Pruned as exc:  # a search's hopeless draw: recorded whole as far as it went, never run again
            saved = max(0, protocol.total_steps(recipe, data) - 1 - exc.step)  # the steps it did not train
            run.set_tags({"sage.pruned": "true", "sage.pruned_at_step": exc.step, "sage.pruned_why": exc.reason,
                          "sage.pruned_steps_saved": saved})
            run.log_text(results_jsonl(history), "results.jsonl")
            run.finish("FINISHED")
            remove_checkpoint(ckpt_path)
            return RunOutcome(run.run_id, uri, "FINISHED", f"draw {recipe.tracking.draw}: {exc}")
        except Preempted as exc:  # the job comes back (requeued) and resumes in this same run
            run.set_tags({"sage.preempted_at_step": exc.step})
            raise
        except TrainingDiverged as exc:
            run.set_tags({"sage.failed_step": exc.step, "sage.failure": str(exc)})
            if history:
                run.log_text(results_jsonl(history), "results.jsonl")
            run.finish("FAILED")
            remove_checkpoint(ckpt_path)  # a diverged run is not worth resuming
            raise
        except KeyboardInterrupt:
            run.finish("KILLED")
            raise Stopped(run.run_id) from None
        except (UserError, OSError) as exc:  # a full disk, an unreadable image: one line, and said in MLflow too
            error = exc if isinstance(exc, UserError) else UserError(
                f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}; the run is marked FAILED "
                "and its last checkpoint kept")
            run.set_tags({"sage.failure": str(error)[:5000]})
            run.finish("FAILED")
            raise error from None
        except BaseException:
            run.finish("FAILED")
            raise

        # training is over: no signal is obeyed before the run is recorded whole (a kill is recovered by
        # the next run: the checkpoint says finished, the run is not, and only this part is done again)
        with interrupts.recording():
            pause_at("finish")
            final, table, line = protocol.finish(result, recipe)
            run.log_metrics(final, step=result.history[-1].step)
            run.log_text(results_jsonl(result.history), "results.jsonl")
            run.log_file(ckpt_path)
            run.finish("FINISHED")
    console.print(table)
    if run.spooled:
        _say(console, f"the MLflow server at {uri} was unreachable: {run.spooled} records of this run are kept in "
                     f"{run.spool.path}; `sage sync` sends them (so does the next `sage run` of this recipe)")
    return RunOutcome(run.run_id, uri, "FINISHED", line, final, spooled=run.spooled)
