"""``sage diagnose``: Theorem 1's two terms at a run's checkpoint.

The checkpoint is a file (its recipe is the ``recipe.yaml`` ``sage run`` writes beside it, or ``--recipe``)
or an MLflow run id (its ``recipe.yaml`` artifact; the checkpoint from the run folder while it is there,
else the run's ``checkpoint.pt`` artifact). The model is rebuilt through the recipe's own protocol, loaded
with the checkpoint's parameters, and measured on fixed, seeded batches of its training distributions (DG:
the training envs; MTL: the tasks, against the shared parameters).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..recipe import Recipe, load_recipe

RECIPE_FILE = "recipe.yaml"


@dataclass
class Target:
    recipe: Recipe
    checkpoint: Path
    run_id: str | None
    tracking_uri: str | None
    step: int


def _from_file(path: Path, recipe_path: Path | None) -> Target:
    from .checkpoint import read_meta

    recipe_path = recipe_path or path.parent / RECIPE_FILE
    if not recipe_path.is_file():
        raise UserError(f"no {RECIPE_FILE} beside {path}: pass the run's recipe with --recipe")
    recipe = load_recipe(recipe_path)
    meta = read_meta(path) or {}
    return Target(recipe, path, meta.get("run_id"), meta.get("tracking_uri"), int(meta.get("step", -1)))


def _from_run(run_id: str, tracking_uri: str, recipe_path: Path | None, scratch: Path) -> Target:
    import os

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files: no bars

    from ..track.store import sqlite_path
    from .checkpoint import read_meta
    from .runner import checkpoint_path_for

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # MLflow would create an empty store there
        raise UserError(f"'{run_id}' is neither a checkpoint file nor a run: no MLflow store at {db}")
    client = MlflowClient(tracking_uri)
    run_id = _full_run_id(client, run_id, tracking_uri)
    try:
        client.get_run(run_id)
        recipe = load_recipe(recipe_path or client.download_artifacts(run_id, RECIPE_FILE, str(scratch)))
    except MlflowException as exc:
        raise UserError(f"run {run_id} in {tracking_uri}: {str(exc).splitlines()[0][:160]}") from None
    local = checkpoint_path_for(recipe)
    meta = read_meta(local)
    if meta is not None and meta.get("run_id") == run_id:
        path = local
    else:
        try:
            path = Path(client.download_artifacts(run_id, "checkpoint.pt", str(scratch)))
        except (MlflowException, OSError):
            raise UserError(f"run {run_id} has no checkpoint: neither {local} nor a checkpoint.pt artifact "
                            "(a run logs it when it finishes)") from None
    step = int((meta or {}).get("step", -1)) if path == local else -1
    return Target(recipe, path, run_id, tracking_uri, step)


def _full_run_id(client, prefix: str, tracking_uri: str) -> str:
    """A run id from a unique prefix of it (as sweep ids are given); a whole id as it is."""
    if len(prefix) >= 32:
        return prefix
    found, token = [], None
    ids = [e.experiment_id for e in client.search_experiments()]
    while ids:
        page = client.search_runs(ids, max_results=1000, page_token=token)
        found += [r.info.run_id for r in page if r.info.run_id.startswith(prefix)]
        token = page.token
        if not token:
            break
    if len(found) > 1:
        raise UserError(f"'{prefix}' is the start of {len(found)} runs in {tracking_uri} ({', '.join(found[:3])}"
                        f"{', …' if len(found) > 3 else ''}); give more of the id")
    if not found:
        raise UserError(f"no run starting with '{prefix}' in {tracking_uri}")
    return found[0]


def locate(target: str, recipe_path: Path | None = None, tracking_uri: str | None = None,
           scratch: Path | None = None) -> Target:
    from ..track.mlflow_run import resolve_tracking_uri

    path = Path(target).expanduser()
    if path.is_file():
        return _from_file(path, recipe_path)
    if "/" in target or target.endswith(".pt"):
        raise UserError(f"checkpoint {path} does not exist")
    return _from_run(target, resolve_tracking_uri(tracking_uri), recipe_path,
                     scratch or Path(tempfile.mkdtemp(prefix="sage-diagnose-")))


def load_task(target: Target, device: str = "cpu"):
    """The recipe's task, its model holding the checkpoint's parameters."""
    from ..catalog import PROTOCOLS
    from .checkpoint import load_checkpoint
    from .runtime import Runtime

    protocol = PROTOCOLS.get(target.recipe.kind)
    data = protocol.load(target.recipe)
    task = protocol.start(target.recipe, data, Runtime.plain(device))
    try:
        state = load_checkpoint(target.checkpoint)
        task.model.load_state_dict(state["parts"]["model"])
    except Exception as exc:  # truncated files, foreign pickles, another model's keys
        raise UserError(f"cannot load the model from {target.checkpoint} ({type(exc).__name__}); is it this "
                        "recipe's checkpoint?") from None
    if target.step < 0:
        target.step = int(state.get("step", 0))
    return task


def log_to_run(target: Target, metrics: dict[str, float]) -> bool:
    """Log the ``diag_*`` metrics into the checkpoint's MLflow run, at its step; False where there is none."""
    if not target.run_id or not target.tracking_uri:
        return False
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    MlflowClient(target.tracking_uri).log_batch(
        target.run_id, metrics=[Metric(k, v, now, max(target.step, 0)) for k, v in metrics.items()])
    return True
