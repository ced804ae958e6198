"""Helpers for the sweep tests: run the real `sage` command in a folder, read the MLflow store back."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
TINY = ["--set", "training.steps=3", "--set", "training.checkpoint_freq=2", "--set", "training.batch_size=8"]


def sage(args, cwd, env=None, timeout=600, **kw):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGE_SWEEPS": str(Path(cwd) / "sweeps"), **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "sage_cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def child_runs(uri):
    client, all_runs = runs(uri)
    return client, [r for r in all_runs if "sage.sweep_id" in r.data.tags and "sage.sweep_parent" not in r.data.tags]


def start_sweep(cwd, *args, env=None, sigint_ignored=False):
    """`sage ARGS` (a sweep) started in ``cwd`` without waiting: (process, tracking URI of its store). ``env``
    reaches the jobs too (the local launcher passes its environment on). ``sigint_ignored``: started as a
    script's background job (``sage sweep … &``), which the shell starts with SIGINT ignored, and its jobs too."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGE_SWEEPS": str(Path(cwd) / "sweeps"), **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    proc = subprocess.Popen([sys.executable, "-m", "sage_cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore)
    return proc, f"sqlite:///{Path(cwd) / 'mlflow.db'}"


def wait_for_running_job(cwd, uri, timeout=120):
    """Until the sweep's folder exists and one of its jobs' runs is RUNNING (sweep.json is written once the store
    exists: never race its creation)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(Path(cwd).glob("sweeps/*/sweep.json")) and any(r.info.status == "RUNNING" for r in child_runs(uri)[1]):
            return
        time.sleep(0.5)
    raise AssertionError("no job of the sweep started")
