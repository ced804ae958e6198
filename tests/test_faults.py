"""Reliability, second round: records never lost, wrong or stuck under faults — a run folder copied onto
another recipe's, spool lines cut mid-write or refused by the store, a finished run's records sent late, a
sweep launcher stopped by SIGTERM or SIGKILL, no SLURM, two first runs racing on a server, a full disk under a
checkpoint, a killed run whose checkpoint is damaged, Ctrl-C before any run exists. Real `sage` processes,
real signals, a real sqlite store or `mlflow server`, a real size-limited tmpfs where the machine lets us
mount one."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sweep_helpers import child_runs, sage, start_sweep, wait_for_running_job
from test_reliability import (
    QUICKSTART,
    TINY,
    _interrupted_after_two_checkpoints,
    one_line_error,
    run,
    runs,
    start,
    tag,
    wait_for,
)

from sage_cli.recipe import load_recipe, parse_overrides
from sage_cli.track.spool import SET_ASIDE_NAME, SPOOL_NAME, entry


def recipe_hash(*sets: str) -> str:
    return load_recipe(QUICKSTART, parse_overrides([*TINY[1::2], *sets])).hash()


def metric_count(folder: Path, run_id: str, key: str) -> int:
    with sqlite3.connect(folder / "mlflow.db") as db:
        return db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid=? AND key=?", (run_id, key)).fetchone()[0]


@contextmanager
def small_filesystem(path: Path, size: str, read_only: bool = False):
    """A real tmpfs of ``size`` mounted at ``path`` (root only; skipped, with the reason, where not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ------------------------------------------------------------------------------- A. records


def test_a_run_folder_copied_onto_another_recipes_is_not_resumed(tmp_path):
    ckpt = _interrupted_after_two_checkpoints(tmp_path)  # recipe A (seed 0), stopped at step 10
    other = ckpt.parents[1] / recipe_hash("training.seed=1", "training.steps=41")
    shutil.copytree(ckpt.parent, other)
    line = one_line_error(run(tmp_path, "--set", "training.steps=41", "--set", "training.seed=1"))
    assert "was saved for another recipe" in line and "--restart" in line
    assert [s for _, s in runs(tmp_path)] == ["KILLED"]  # A's run untouched, no run of B
    fresh = run(tmp_path, "--set", "training.steps=41", "--set", "training.seed=1", "--restart")
    assert fresh.returncode == 0 and sorted(s for _, s in runs(tmp_path)) == ["FINISHED", "KILLED"]


def test_a_spool_line_cut_mid_write_is_set_aside_and_the_whole_lines_are_sent(tmp_path):
    ckpt = _interrupted_after_two_checkpoints(tmp_path)
    [(run_id, _)] = runs(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = ckpt.parent / SPOOL_NAME
    whole = entry(uri, run_id, "metrics", metrics={"kept_metric": 1.5}, step=7)
    spool.write_text(json.dumps(whole) + "\n" + json.dumps(whole)[:40])  # the process died inside the append
    synced = sage(["sync", str(tmp_path / "runs")], tmp_path)
    assert synced.returncode == 0 and "Traceback" not in synced.stderr, synced.stderr
    assert "1 cut line(s)" in synced.stderr and "set aside" in synced.stderr and " 1 sent" in synced.stdout
    assert metric_count(tmp_path, run_id, "kept_metric") == 1 and not spool.exists()
    aside = [json.loads(line) for line in (ckpt.parent / SET_ASIDE_NAME).read_text().splitlines()]
    assert aside == [{"reason": "cut mid-write", "line": json.dumps(whole)[:40]}]
    # the same cut found by the next `sage run`: it resumes and finishes the run, nothing stays RUNNING
    spool.write_text(json.dumps(whole)[:25])
    again = run(tmp_path, "--set", "training.steps=41")
    assert again.returncode == 0, again.stderr[-2000:]
    assert [s for _, s in runs(tmp_path)] == ["FINISHED"]


def test_a_write_the_store_refuses_is_set_aside_and_never_blocks_the_rest(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    client.log_param(run_id, "lr", "0.1")
    folder = tmp_path / "runs" / "abc"
    folder.mkdir(parents=True)
    lines = [entry(uri, run_id, "params", params={"lr": "0.2"}),  # logged again with another value: refused
             entry(uri, run_id, "metrics", metrics={"after": 2.0}, step=1), entry(uri, run_id, "finish", status="FINISHED")]
    (folder / SPOOL_NAME).write_text("".join(json.dumps(x) + "\n" for x in lines))
    synced = sage(["sync", str(tmp_path / "runs")], tmp_path)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "refused 1 kept write" in synced.stderr and "unreachable" not in synced.stdout + synced.stderr
    run = client.get_run(run_id)
    assert run.data.params["lr"] == "0.1" and run.data.metrics["after"] == 2.0 and run.info.status == "FINISHED"
    [aside] = [json.loads(x) for x in (folder / SET_ASIDE_NAME).read_text().splitlines()]
    assert aside["reason"].startswith("refused") and aside["entry"]["kind"] == "params"


def test_a_finished_runs_kept_records_are_sent_once_by_the_next_run(tmp_path):
    proc = start(tmp_path, SAGE_PAUSE_AT="finish:60")
    wait_for(proc, "sage: paused at finish")
    proc.kill()  # trained to the end; what follows is what a server that was away would have kept
    proc.wait(timeout=30)
    [(run_id, status)] = runs(tmp_path)
    assert status == "RUNNING"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spool = next(tmp_path.glob("runs/*/")) / SPOOL_NAME
    spool.write_text(json.dumps(entry(uri, run_id, "metrics", metrics={"target_acc": 0.5}, step=20)) + "\n"
                     + json.dumps(entry(uri, run_id, "finish", status="FINISHED")) + "\n")
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "now sent" in again.stdout and "nothing trained again" in again.stdout
    assert runs(tmp_path) == [(run_id, "FINISHED")]
    assert metric_count(tmp_path, run_id, "target_acc") == 1 and tag(tmp_path, run_id, "sage.recovered") is None


def _sweep(tmp_path, *extra):
    return start_sweep(tmp_path, "ablate", QUICKSTART, "--rho", "1e-3,2e-3", "--set", "training.checkpoint_freq=10",
                       *extra)[0]


def _parent(uri: str):
    client, every = child_runs(uri)[0], []
    for e in client.search_experiments():
        every += [r for r in client.search_runs([e.experiment_id]) if r.data.tags.get("sage.sweep_parent") == "true"]
    return every


def test_sigterm_of_a_sweep_marks_its_parent_run_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _sweep(tmp_path, "--set", "training.steps=5000")
    try:
        wait_for_running_job(tmp_path, uri)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    [parent] = _parent(uri)
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in child_runs(uri)[1]] == ["KILLED"]


def test_a_sweep_launcher_killed_outright_is_settled_by_sage_status(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = _sweep(tmp_path, "--set", "training.steps=60")
    try:
        wait_for_running_job(tmp_path, uri)
        proc.kill()  # SIGKILL: nothing of the launcher runs again; its running job goes on in its own session
        proc.wait(timeout=30)
        sweep_id = next(tmp_path.glob("sweeps/*/sweep.json")).parent.name
        deadline = time.time() + 180
        while time.time() < deadline:  # `sage status` settles the parent once its job's process has ended too
            status = sage(["status", sweep_id], tmp_path, env={"COLUMNS": "200"})
            [parent] = _parent(uri)
            if parent.info.status != "RUNNING":
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status.returncode == 0, status.stderr
    assert "1 finished" in status.stdout and "not started" in status.stdout
    assert parent.info.status == "FAILED"
    assert "launcher is gone" in parent.data.tags["sage.failure"] and "1 not started" in parent.data.tags["sage.failure"]


def test_slurm_launcher_without_slurm_is_one_line_and_records_nothing(tmp_path):
    bare = tmp_path / "bin"  # a PATH with python and nothing of SLURM
    bare.mkdir()
    result = sage(["ablate", QUICKSTART, "--rho", "1e-3", "--launcher", "slurm"], tmp_path,
                  env={"PATH": str(bare)})
    line = one_line_error(result)
    assert "no SLURM here" in line
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_finished_local_sweep_run_again_elsewhere_keeps_its_launcher_and_end(tmp_path):
    args = ["ablate", QUICKSTART, "--rho", "1e-3", *TINY]
    assert sage(args, tmp_path).returncode == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    [parent] = _parent(uri)
    state = next(tmp_path.glob("sweeps/*/sweep.json"))
    before = json.loads(state.read_text())
    fake = tmp_path / "bin"  # a SLURM that answers: the sweep has nothing to submit to it
    fake.mkdir()
    for tool in ("sbatch", "sinfo"):
        (fake / tool).write_text("#!/bin/sh\necho debug\n")
        (fake / tool).chmod(0o755)
    again = sage([*args, "--launcher", "slurm"], tmp_path, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    assert json.loads(state.read_text())["launcher"] == before["launcher"] == "local"
    assert child_runs(uri)[0].get_run(parent.info.run_id).info.status == "FINISHED"


def test_two_first_runs_racing_on_a_server_share_the_experiment(tmp_path):
    """The creation one of them loses (RESOURCE_ALREADY_EXISTS from a real server) reads the winner's id."""
    from mlflow.tracking import MlflowClient
    from report_fixtures import mlflow_server

    from sage_cli.track.mlflow_run import experiment_id_for

    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as url:
        winner = MlflowClient(url).create_experiment("raced")

        class LateClient(MlflowClient):  # looked before the winner created it; creates after
            looked = False

            def get_experiment_by_name(self, name):
                if not self.looked:
                    self.looked = True
                    return None
                return super().get_experiment_by_name(name)

        assert experiment_id_for(LateClient(url), "raced") == winner


# ------------------------------------------------------------------------- a full disk, damage


def test_a_full_disk_at_a_checkpoint_is_one_line_keeps_the_previous_and_no_tmp(tmp_path):
    with small_filesystem(tmp_path / "small", "600k") as small:  # one checkpoint fits, two do not
        result = run(tmp_path, "--set", f"training.output_dir={small}", "--set", "training.steps=41")
        line = one_line_error(result)
        assert "cannot save the checkpoint" in line and "previous checkpoint is kept" in line
        folder = next(small.iterdir())
        assert not list(folder.glob("*.tmp")) and (folder / "checkpoint.pt").is_file()
        [(run_id, status)] = runs(tmp_path)
        assert status == "FAILED" and "cannot save the checkpoint" in tag(tmp_path, run_id, "sage.failure")


def test_a_killed_run_whose_checkpoint_is_damaged_is_marked_failed(tmp_path):
    proc = start(tmp_path, "--set", "training.steps=41", SAGE_PAUSE_AT="checkpoint@10:60")
    wait_for(proc, "sage: paused at checkpoint")
    proc.kill()
    proc.wait(timeout=30)
    for path in next(tmp_path.glob("runs/*/")).glob("checkpoint*.pt"):
        path.write_bytes(path.read_bytes()[:500])  # truncated
    line = one_line_error(run(tmp_path, "--set", "training.steps=41"))
    assert "damaged" in line
    [(run_id, status)] = runs(tmp_path)
    assert status == "FAILED" and "checkpoint is damaged" in tag(tmp_path, run_id, "sage.failure")


def test_ctrl_c_before_any_run_exists_says_nothing_was_recorded(tmp_path):
    proc = start(tmp_path, SAGE_PAUSE_AT="load:60")
    wait_for(proc, "sage: paused at load")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "before any MLflow run existed: nothing was recorded" in err and "KILLED" not in err
    assert not (tmp_path / "mlflow.db").exists() or runs(tmp_path) == []


def test_ctrl_c_during_training_names_the_killed_run(tmp_path):
    proc = start(tmp_path, "--set", "training.steps=41", SAGE_PAUSE_AT="checkpoint@10:3")
    wait_for(proc, "sage: paused at checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    [(run_id, status)] = runs(tmp_path)
    assert proc.returncode == 130 and status == "KILLED" and f"MLflow run {run_id} is marked KILLED" in err


def test_many_newton_schulz_steps_stay_bounded(tmp_path):
    import torch

    from sage_cli.optim.polar_factor import polar_many

    torch.manual_seed(0)
    tiny = [1e-9 * torch.randn(64, 1024), torch.randn(32, 512)]  # a near-zero gradient: the overflow case
    for steps in (5, 30, 100):
        for q in polar_many(tiny, "quintic", steps):
            s = torch.linalg.svdvals(q.double())
            assert torch.isfinite(q).all() and float(s.max()) < 1.2, (steps, float(s.max()))
    done = run(tmp_path, "--set", "optimizer.ns_steps=100")
    assert done.returncode == 0, done.stderr[-1500:]


@pytest.mark.parametrize("next_step_fails", [False, True])
def test_a_diverged_step_is_read_one_step_late_named_and_never_saved(tmp_path, monkeypatch, next_step_fails):
    """The loop reads a step's loss only once the next step is queued (on a GPU, the host never waits between
    steps), but before anything is evaluated or saved: the run stops naming the step whose loss was NaN, its
    last checkpoint is the one before. A step that fails on the NaNs it was handed reports the divergence."""
    import torch

    from sage_cli.errors import TrainingDiverged
    from sage_cli.train.checkpoint import results_path
    from sage_cli.train.dg import DGTask, train_dg

    events = []

    class Loss:  # the step's loss, noting when the loop reads it
        def __init__(self, step, value):
            self.step, self.value = step, value

        def __float__(self):
            events.append(f"read {self.step}")
            return float(self.value)

    real = DGTask.step

    def step(self, i):
        if i == 3:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        if i == 4 and next_step_fails:
            raise RuntimeError("linalg.eigh failed to converge")
        loss, stats = real(self, i)
        events.append(f"step {i}")
        return Loss(i, loss), stats

    monkeypatch.setattr(DGTask, "step", step)
    recipe = load_recipe(QUICKSTART, {"training.steps": 8, "training.checkpoint_freq": 2, "training.batch_size": 8})
    with pytest.raises(TrainingDiverged) as exc:
        train_dg(recipe, checkpoint_path=tmp_path / "checkpoint.pt")
    assert exc.value.step == 3 and "nan" in str(exc.value)
    # step 1's loss read after step 2 ran; step 2's before position 2 is evaluated; step 3's after step 4
    assert events == ["step 0", "read 0", "step 1", "step 2", "read 1", "read 2", "step 3"] + (
        ["read 3"] if next_step_fails else ["step 4", "read 3"])
    rows = [json.loads(line) for line in results_path(tmp_path / "checkpoint.pt").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2]
