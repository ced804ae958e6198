"""One MLflow run per training run, through an explicit ``MlflowClient`` (no global fluent state, so
several runs can share a process)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .store import check_store, fail_fast_requests, server_unreachable, sqlite_path, store_lock

DEFAULT_URI = "sqlite:///mlflow.db"


def quiet_migrations() -> None:
    """MLflow logs its schema migrations on a fresh store at INFO, on stderr: a one-line error after them would
    not be one line, and a user has nothing to do about them."""
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def resolve_tracking_uri(recipe_uri: str | None) -> str:
    """The recipe's ``tracking.uri`` if set, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."""
    return recipe_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_id_for(client, experiment: str) -> str:
    """The experiment's id, created if missing. Two first runs against one server can both find it missing:
    the one whose creation is refused (RESOURCE_ALREADY_EXISTS) reads the other's (a sqlite store also has
    ``store_lock``; a server has no lock to share)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(experiment)
    except MlflowException as exc:
        exp = client.get_experiment_by_name(experiment)
        if exp is None or exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return exp.experiment_id


def run_status(client, run_id: str | None) -> str | None:
    """The run's status in this store, or None where it has no such (active) run."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run.info.status if run.info.lifecycle_stage == "active" else None


class MlflowRun:
    """A thin owner of one run: params, tags, metrics per step, artifacts, terminal status. With ``spool``,
    a write that an unreachable server cannot take is kept there (``track/spool.py``) and training goes on;
    later writes first send what is kept."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None, tags: dict[str, str],
                 resume_run_id: str | None = None, spool: Path | None = None):
        """A new run, or with ``resume_run_id`` that run reopened (RUNNING again) if this store has it."""
        quiet_migrations()
        from mlflow.tracking import MlflowClient

        from .spool import Spool

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.spool = Spool(spool) if spool is not None else None
        self.resumed = False
        if resume_run_id and self._exists(resume_run_id):
            self.run_id, self.resumed = resume_run_id, True
            self.flush()  # what an earlier process could not send, before anything new
            self.client.update_run(resume_run_id, status="RUNNING")
            return
        exp_id = experiment_id_for(self.client, experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    @property
    def spooled(self) -> int:
        return len(self.spool) if self.spool is not None else 0

    def flush(self) -> int:
        """Send what is kept; the number of writes still kept."""
        if not self.spooled:
            return 0
        return self.spool.replay(lambda uri: self.client)[1]

    def _write(self, kind: str, **args) -> None:
        from .spool import apply, entry

        item = entry(self.tracking_uri, self.run_id, kind, **args)
        if self.spooled and self.flush():  # the server is still away: keep the order
            self.spool.append(item)
            return
        try:
            apply(self.client, item)
        except Exception:
            if self.spool is None or not server_unreachable(self.tracking_uri):
                raise
            if not self.spooled:
                logging.getLogger("sage").warning(
                    "the MLflow server at %s is unreachable: training goes on, its records are kept in %s",
                    self.tracking_uri, self.spool.path)
            self.spool.append(item)

    def log_params(self, params: dict) -> None:
        self._write("params", params={k: str(v) for k, v in params.items()})

    def set_tags(self, tags: dict) -> None:
        self._write("tags", tags={k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._write("metrics", metrics={k: float(v) for k, v in metrics.items()}, step=step)

    def log_text(self, text: str, name: str) -> None:
        self._write("text", text=text, name=name)

    def log_file(self, path: str | Path) -> None:
        self._write("file", path=str(Path(path).resolve()))

    def finish(self, status: str = "FINISHED") -> None:
        self._write("finish", status=status)


# ------------------------------------------------------------------------------------------- sweeps
def absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute, so jobs started elsewhere log into the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def prepare_store(uri: str, experiment: str) -> str:
    """Create the store (schema migration) and the experiment once, before jobs fan out: many processes
    creating a fresh sqlite store at once fail in its alembic schema migration (MLflow 3.x)."""
    quiet_migrations()
    from mlflow.tracking import MlflowClient

    check_store(uri)
    with store_lock(uri):
        return experiment_id_for(MlflowClient(tracking_uri=uri), experiment)


def finished_hashes(uri: str) -> set[str]:
    """Recipe hashes that already have a FINISHED run. For a sqlite store this reads the database directly
    (no mlflow import: a dry run of a thousand jobs stays fast); elsewhere through the client."""
    check_store(uri)  # an unreachable server: one line now, not minutes of retries
    path = sqlite_path(uri)
    if path is not None:
        if not path.is_file():
            return set()
        import sqlite3

        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            try:
                rows = db.execute(
                    "SELECT t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                    "WHERE t.key = 'sage.recipe_hash' AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active'"
                ).fetchall()
            except sqlite3.OperationalError:  # an empty file, not yet an mlflow store
                return set()
        return {r[0] for r in rows}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    done: set[str] = set()
    token = None
    while ids:
        page = client.search_runs(ids, filter_string="attributes.status = 'FINISHED'", max_results=1000,
                                  page_token=token)
        done |= {r.data.tags["sage.recipe_hash"] for r in page if "sage.recipe_hash" in r.data.tags}
        token = page.token
        if not token:
            break
    return done


def finished_run_of(uri: str, recipe_hash: str) -> str | None:
    """The id of the latest FINISHED run of the recipe identity ``recipe_hash`` in the store, or None."""
    from mlflow.tracking import MlflowClient

    check_store(uri, read_only=True)
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=f"attributes.status = 'FINISHED' and tags.`sage.recipe_hash` = "
                                                  f"'{recipe_hash}'", order_by=["attributes.end_time DESC"],
                               max_results=1) if ids else []
    return found[0].info.run_id if found else None


def sweep_runs(uri: str, sweep_id: str) -> list:
    """Every child run of a sweep (any status)."""
    from mlflow.tracking import MlflowClient

    check_store(uri, read_only=True)  # `sage status` of a sweep whose server is down: one line, not a hang
    fail_fast_requests()
    quiet_migrations()
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    return list(client.search_runs(ids, filter_string=f"tags.`sage.sweep_id` = '{sweep_id}'", max_results=50000))
