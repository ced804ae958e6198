"""One MLflow run per training run, through an explicit ``MlflowClient`` (no global fluent state, so
several runs can share a process)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_PARAM_LENGTH = 6000  # mlflow truncates longer values (with a warning); keep ours well under


def resolve_tracking_uri(recipe_uri: str | None) -> str:
    """The recipe's ``tracking.uri`` if set, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."""
    return recipe_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


class MlflowRun:
    """A thin owner of one run: params, tags, metrics per step, artifacts, terminal status."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None, tags: dict[str, str],
                 resume_run_id: str | None = None):
        """A new run, or with ``resume_run_id`` that run reopened (RUNNING again) if this store has it."""
        for name in ("alembic", "mlflow.store.db.utils"):  # schema migrations on a fresh store
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.resumed = False
        if resume_run_id and self._exists(resume_run_id):
            self.run_id, self.resumed = resume_run_id, True
            self.client.update_run(resume_run_id, status="RUNNING")
            return
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # mlflow's batch limit
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_file(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_bytes(self, write, name: str) -> None:
        """Log an artifact produced by ``write(path)`` into a temporary folder."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.log_file(path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
