"""`sage run` and `sage validate` end to end: real recipes, a real MLflow sqlite store in a temp folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
SAGE = [sys.executable, "-m", "sage_cli"]
FAST = ["--set", "training.steps=5", "--set", "training.checkpoint_freq=2", "--set", "training.batch_size=8"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _client(path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")


def _all_runs(path):
    client = _client(path)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


BAD_RECIPES = {
    "malformed": "optimizer: {lr: 1\n",
    "empty": "",
    "top_level_list": "- dataset\n- optimizer\n",
    "unknown_key": "optimizer:\n  method: sage\n  foo: 1\n",
    "misspelled_key": "optimizer:\n  gama: 1e-6\n",
    "wrong_type": "training:\n  steps: [1, 2]\n",
    "negative_rho": "optimizer:\n  rho: -1e-6\n",
    "negative_gamma": "optimizer:\n  gamma: -1e-6\n",
    "negative_lr": "optimizer:\n  lr: -1e-3\n",
    "unknown_dataset": "dataset:\n  name: mnist\n",
    "unknown_optimizer": "optimizer:\n  method: lion\n",
    "test_env_out_of_range": "dataset:\n  test_envs: [9]\n",
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_one_line_exit_2_no_mlflow_run(workdir, case):
    path = workdir / f"{case}.yaml"
    path.write_text(BAD_RECIPES[case])
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.output
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


def test_missing_recipe_file(workdir):
    result = CliRunner().invoke(app, ["run", "does-not-exist.yaml"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: does-not-exist.yaml: recipe file not found"
    assert list(workdir.iterdir()) == []


def test_bad_test_env_flag(workdir):
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), "--test-env", "7"])
    assert result.exit_code == 2
    assert "test env 7 is out of range" in result.output
    assert list(workdir.iterdir()) == []


def test_validate_prints_resolved_recipe_and_hash(workdir):
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", "optimizer.rho=1e-5"])
    assert result.exit_code == 0, result.output
    assert "rho: 1.0e-05" in result.output and "# ok:" in result.output
    bad = CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", "optimizer.rho=-1"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --set optimizer.rho")


def test_run_leaves_one_finished_mlflow_run_with_metrics_and_artifacts(workdir):
    proc = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST, "--seed", "3"], cwd=workdir,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "target env 5 accuracy:" in proc.stdout
    runs = _all_runs(workdir)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    client = _client(workdir)
    # metrics at every checkpoint (steps 0, 2, 4) for every env's in and out split
    for i in range(6):
        for split in ("in", "out"):
            history = client.get_metric_history(run.info.run_id, f"env{i}_{split}_acc")
            assert [m.step for m in history] == [0, 2, 4]
    for key in ("loss", "agreement", "noise_scale", "step_time", "grad_norm", "perturbation_norm", "target_acc"):
        assert key in run.data.metrics
    tags = run.data.tags
    assert tags["sage.dataset"] == "rotated_digits" and tags["sage.method"] == "sage"
    assert tags["sage.test_envs"] == "5" and tags["sage.seed"] == "3" and len(tags["sage.recipe_hash"]) == 16
    assert run.data.params["optimizer.rho"] == "0.003" and run.data.params["training.steps"] == "5"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"recipe.yaml", "results.jsonl", "checkpoint.pt"}
    local = Path(client.download_artifacts(run.info.run_id, "results.jsonl", str(workdir)))
    import json

    rows = [json.loads(line) for line in local.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[-1]["args"]["test_envs"] == [5] and "env5_in_acc" in rows[-1] and "hparams" in rows[-1]


def test_nan_loss_marks_run_failed_with_step(workdir):
    proc = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST, "--set", "optimizer.lr=1e30"], cwd=workdir,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert "error: loss became nan at step" in proc.stderr
    runs = _all_runs(workdir)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["sage.failed_step"].isdigit()


def test_tracking_uri_from_environment(workdir, monkeypatch):
    store = workdir / "elsewhere.db"
    proc = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    assert proc.returncode == 0, proc.stderr
    assert store.exists() and not (workdir / "mlflow.db").exists()


def test_console_script_bad_input_is_one_line_exit_2(workdir):
    (workdir / "bad.yaml").write_text("optimizer:\n  rhoo: 1\n")
    proc = subprocess.run([*SAGE, "run", "bad.yaml"], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == "error: bad.yaml:2: optimizer.rhoo: unknown key (did you mean 'rho'?)"


def test_help_imports_no_heavy_library():
    code = ("import sys; from sage_cli.cli import app; "
            "heavy = [m for m in ('torch', 'mlflow', 'sklearn', 'pydantic') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    helped = subprocess.run([*SAGE, "--help"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert helped.returncode == 0 and "run" in helped.stdout and "validate" in helped.stdout
