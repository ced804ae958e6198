"""A real MLflow sqlite store filled with runs of known numbers, in the tags and metrics sage runs log, and a
real `mlflow server` over it."""

import socket
import subprocess
import sys
import time
from contextlib import contextmanager

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient


def add_run(client, experiment_id, *, dataset, label, hparams, seed, test_envs=(), rows=(), final=None,
            status="FINISHED", kind="dg", sweep="synthetic-1", params=None):
    """One run: ``rows`` are (step, {metric: value}) checkpoints; ``final`` the MTL final_* metrics."""
    tags = {"sage.dataset": dataset, "sage.label": label, "sage.hparams_hash": hparams, "sage.seed": str(seed),
            "sage.test_envs": ",".join(map(str, test_envs)), "sage.kind": kind, "sage.sweep_id": sweep,
            "sage.recipe_hash": f"{label}-{hparams}-{seed}-{test_envs}"}
    run = client.create_run(experiment_id, tags=tags)
    metrics = [Metric(k, v, 0, step) for step, values in rows for k, v in values.items()]
    metrics += [Metric(f"final_{k}", v, 0, 0) for k, v in (final or {}).items()]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, str(v)) for k, v in (params or {}).items()],
                     tags=[RunTag("mlflow.runName", label)])
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def accs(test_in=None, test_out=None, test=0, out=(), ins=(), n=3):
    """Checkpoint metrics of a ``n``-env dataset: ``out``/``ins`` list the other envs' values in env order."""
    values, others = {}, [i for i in range(n) if i != test]
    for i, v in zip(others, out):
        values[f"env{i}_out_acc"] = v
    for i, v in zip(others, ins):
        values[f"env{i}_in_acc"] = v
    values[f"env{test}_in_acc"] = test_in if test_in is not None else 0.0
    values[f"env{test}_out_acc"] = test_out if test_out is not None else 0.0
    for i in range(n):
        values.setdefault(f"env{i}_in_acc", 0.0)
        values.setdefault(f"env{i}_out_acc", 0.0)
    return values


def synthetic_store(path):
    """toy3 (3 envs) DG runs A (2 hparams × 2 seeds, test env 0), B (seeds 0–2, test envs 0 and 1; one failed,
    one running), C (LOO: test env 0 with its two pairs); NYU-v2 rows LS and SAGE-LS, 2 seeds each."""
    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("synthetic")
    dg = dict(client=client, experiment_id=exp, dataset="toy3")
    # A, seed 0: h1's best training checkpoint is step 100 (val .65, test .60); h2 ties at .6 (step 0 first: .50)
    add_run(**dg, label="A", hparams="h1", seed=0, test_envs=(0,),
            rows=[(0, accs(.40, .30, out=(.5, .5))), (100, accs(.60, .55, out=(.7, .6)))])
    add_run(**dg, label="A", hparams="h2", seed=0, test_envs=(0,),
            rows=[(0, accs(.50, .45, out=(.6, .6))), (100, accs(.70, .65, out=(.7, .5)))])
    # A, seed 1: both candidates reach val .7: DomainBed's reversed sort takes the later one (h2: .64)
    add_run(**dg, label="A", hparams="h1", seed=1, test_envs=(0,),
            rows=[(0, accs(.62, .50, out=(.6, .8))), (100, accs(.66, .60, out=(.6, .6)))])
    add_run(**dg, label="A", hparams="h2", seed=1, test_envs=(0,),
            rows=[(0, accs(.30, .20, out=(.4, .4))), (100, accs(.64, .58, out=(.7, .7)))])
    for seed, env, acc in [(0, 0, .7), (1, 0, .8), (0, 1, .9), (1, 1, .6)]:
        add_run(**dg, label="B", hparams="b", seed=seed, test_envs=(env,),
                rows=[(0, accs(acc, acc, test=env, out=(.5, .5)))])
    add_run(**dg, label="B", hparams="b", seed=2, test_envs=(1,), status="FAILED",
            rows=[(0, accs(.1, .1, test=1, out=(.5, .5)))])
    add_run(**dg, label="B", hparams="b", seed=2, test_envs=(0,), status="RUNNING",
            rows=[(0, accs(.1, .1, out=(.5, .5)))])
    # C: leave-one-domain-out for test env 0; step 0 scores (.7 + .5)/2, step 100 (.6 + .8)/2: step 100, .60
    add_run(**dg, label="C", hparams="c", seed=0, test_envs=(0,),
            rows=[(0, accs(.5, .5, out=(.5, .5))), (100, accs(.6, .6, out=(.5, .5)))])
    add_run(**dg, label="C", hparams="c", seed=0, test_envs=(0, 1),
            rows=[(0, accs(.0, .0, ins=(.7, .0))), (100, accs(.0, .0, ins=(.6, .0)))])
    add_run(**dg, label="C", hparams="c", seed=0, test_envs=(0, 2),
            rows=[(0, accs(.0, .0, ins=(.0, .5))), (100, accs(.0, .0, ins=(.0, .8)))])
    nyu = dict(client=client, experiment_id=exp, dataset="nyuv2", kind="mtl")
    for seed, miou, pixacc, abs_err in [(0, 39.0, 65.00, 0.55), (1, 40.0, 65.00, 0.56)]:
        add_run(**nyu, label="LS", hparams="ls", seed=seed, final=_nyu(miou, pixacc, abs_err))
    for seed, miou, pixacc, abs_err in [(0, 41.0, 65.00, 0.57), (1, 42.0, 65.001, 0.58)]:
        add_run(**nyu, label="SAGE-LS", hparams="sage", seed=seed, final=_nyu(miou, pixacc, abs_err))
    return uri


def _nyu(miou, pixacc, abs_err):
    return {"miou": miou, "pixacc": pixacc, "abs": abs_err, "rel": 0.22, "mean": 27.0, "median": 23.0,
            "within_11.25": 22.0, "within_22.5": 48.0, "within_30": 62.0}


@contextmanager
def mlflow_server(store_uri: str, cwd, workers: int = 1):
    """A real `mlflow server` on a free 127.0.0.1 port over ``store_uri``; yields its URL, stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--host",
                               "127.0.0.1", "--port", str(port), "--workers", str(workers)], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
