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


def test_the_entry_point_leaves_without_the_shutdowns_collections_and_an_in_process_call_keeps_its_collector():
    """`sage` hands its objects to the permanent generation as it ends (its shutdown skips collecting torch's and
    MLflow's graphs); its exit status is kept. A caller in the same process (CliRunner here) is left as it was."""
    import gc

    code = ("import atexit, gc, sys; atexit.register(lambda: print('frozen', gc.get_freeze_count())); "
            "sys.argv = ['sage', 'validate', 'missing.yaml']; from sage_cli.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr, proc.stderr
    assert int(proc.stdout.split("frozen")[-1]) > 10_000, proc.stdout  # every object it made, not a few
    assert CliRunner().invoke(app, ["--version"]).exit_code == 0 and gc.get_freeze_count() == 0


# ------------------------------------------------------------- what a newcomer trips on (issue: small things)


def test_version_and_command_summaries_that_are_not_cut_at_abbreviations():
    version = CliRunner().invoke(app, ["--version"])
    from sage_cli import __version__

    assert version.exit_code == 0 and version.output.strip() == f"sage {__version__}"
    listing = CliRunner().invoke(app, ["--help"]).output
    summaries = {line.split()[0]: line for line in listing.splitlines() if line.startswith("  ") and line.split()}
    for command in ("report", "analysis"):
        assert not summaries[command].rstrip().endswith(("App.", "Fig.")), summaries[command]
    assert "model" in summaries["report"] and "App. C" in summaries["analysis"]


def test_status_lists_jobs_in_plan_order_says_queued_and_names_an_ambiguous_prefix(workdir, monkeypatch):
    from sage_cli.launch.state import JobRecord, SweepState

    monkeypatch.setenv("SAGE_SWEEPS", str(workdir / "sweeps"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    planned = ["ff01", "0a02", "7c03"]  # plan order, not hash order
    for name in ("abl-1", "abl-2"):
        SweepState(name, "abl", uri, "e", launcher="slurm",
                   jobs={h: JobRecord(h, f"job {i}", "r.json", "slurm") for i, h in enumerate(planned)}).save()
    shown = CliRunner().invoke(app, ["status", "abl-1"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if "│ job " in line]
    assert [next((h for h in planned if h in row), row) for row in rows] == planned, shown.output
    assert all("queued" in row for row in rows) and shown.output.strip().splitlines()[-1] == "3 queued"
    ambiguous = CliRunner().invoke(app, ["status", "abl"])
    assert ambiguous.exit_code == 2 and "'abl' matches 2 sweeps (abl-1, abl-2); give more of the id" in ambiguous.output


def test_datasets_without_a_root_does_not_speak_of_a_recipe(workdir, monkeypatch):
    monkeypatch.delenv("SAGE_DATA", raising=False)
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 2 and "SAGE_DATA" in result.output
    assert "in the recipe" not in result.output


def test_analysis_never_writes_into_the_working_folders_docs_by_default(workdir):
    result = CliRunner().invoke(app, ["analysis", "figure-2"])
    assert result.exit_code == 0, result.output
    assert (workdir / "sage-analysis" / "figure_2.png").is_file() and not (workdir / "docs").exists()


def test_a_recipe_whose_identity_has_a_finished_run_is_not_trained_again_without_force(workdir):
    first = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST], cwd=workdir, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST], cwd=workdir, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    runs = _client(workdir).search_runs([_client(workdir).get_experiment_by_name("quickstart").experiment_id])
    assert again.returncode == 0 and "already has a FINISHED run" in again.stdout and "--force" in again.stdout
    assert len(runs) == 1 and runs[0].info.run_id in again.stdout and "━" not in again.stdout  # no bar: no step
    forced = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST, "--force"], cwd=workdir, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert forced.returncode == 0, forced.stderr
    assert len(_client(workdir).search_runs([runs[0].info.experiment_id])) == 2


def test_a_redirected_run_prints_one_line_per_checkpoint(workdir):
    """A SLURM log, `sage logs`, `> file`: the progress bar draws nothing there, so each checkpoint is a line."""
    proc = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST], cwd=workdir, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["0", "2", "4"], proc.stdout
    assert all(" · loss " in line and " · test out " in line and " · val " in line and " · ETA " in line
               for line in lines)


def test_runs_are_named_for_their_row_and_log_only_settings_that_act(workdir):
    proc = subprocess.run([*SAGE, "run", str(QUICKSTART), *FAST, "--seed", "2"], cwd=workdir, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    client = _client(workdir)
    [run] = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert run.info.run_name == "sage · rotated_digits · env 5 · seed 2"
    params = run.data.params
    assert "optimizer.rho" in params and "training.steps" in params
    for idle in ("optimizer.momentum", "optimizer.samo_beta", "training.epochs", "aggregator"):
        assert idle not in params, idle  # Adam reads no momentum; SAMO is off; a DG run has no epochs
    shown = CliRunner().invoke(app, ["validate", str(QUICKSTART)])
    assert "# idle here (not read by this run): " in shown.output and "optimizer.momentum=0.9" in shown.output
