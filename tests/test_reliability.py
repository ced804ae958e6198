"""Nothing lost, nothing stuck: SIGTERM and SIGKILL at several phases, two runs of one recipe at once, many
first runs into one fresh store, damaged checkpoints, bad stores and bad overrides. Every test drives real
`sage run` processes and checks the MLflow store afterwards, not only the exit code.

``SAGE_PAUSE_AT=PHASE[:SECONDS]`` (startup, checkpoint, finish) makes a run print ``sage: paused at PHASE``
to stderr and wait there: the fault-injection point these tests kill at."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TINY = ["--set", "training.steps=21", "--set", "training.checkpoint_freq=10", "--set", "training.batch_size=8"]


def _env(folder: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SAGE_PAUSE_AT")}
    env.update({"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1", **extra})
    return env


def start(folder: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sage_cli", "run", str(QUICKSTART), *TINY, *args], cwd=folder,
                            env=_env(folder, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(folder: Path, *args, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sage_cli", "run", str(QUICKSTART), *TINY, *args], cwd=folder,
                          env=_env(folder, **env), capture_output=True, text=True, timeout=timeout)


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """Read stderr until ``marker`` appears (the process keeps running)."""
    seen, deadline = "", time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if marker in line:
            return seen
    proc.kill()
    raise AssertionError(f"never saw {marker!r}; stderr: {seen[-2000:]}")


def runs(folder: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the folder's store."""
    with sqlite3.connect(folder / "mlflow.db") as db:
        return db.execute("SELECT run_uuid, status FROM runs ORDER BY start_time").fetchall()


def metric_steps(folder: Path, run_id: str, key: str) -> list[int]:
    with sqlite3.connect(folder / "mlflow.db") as db:
        return sorted({s for (s,) in db.execute("SELECT step FROM metrics WHERE run_uuid=? AND key=?", (run_id, key))})


def tag(folder: Path, run_id: str, key: str) -> str | None:
    with sqlite3.connect(folder / "mlflow.db") as db:
        row = db.execute("SELECT value FROM tags WHERE run_uuid=? AND key=?", (run_id, key)).fetchone()
    return row[0] if row else None


def one_line_error(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------------------- signals and kills


def test_sigterm_stops_at_a_safe_point_marks_killed_and_resumes(tmp_path):
    proc = start(tmp_path, SAGE_PAUSE_AT="checkpoint:2")
    wait_for(proc, "sage: paused at checkpoint")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 130
    [(run_id, status)] = runs(tmp_path)
    assert status == "KILLED"
    assert next(tmp_path.glob("runs/*/checkpoint.pt")).is_file()
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert runs(tmp_path) == [(run_id, "FINISHED")]


@pytest.mark.parametrize("phase", ["startup", "checkpoint", "finish"])
def test_sigkill_at_any_phase_leaves_one_run_that_the_next_run_completes(tmp_path, phase):
    proc = start(tmp_path, SAGE_PAUSE_AT=phase)
    wait_for(proc, f"sage: paused at {phase}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    [(dead, status)] = runs(tmp_path)
    assert status == "RUNNING"  # nobody could mark it: the next command must
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr
    final = runs(tmp_path)
    assert final[-1][1] == "FINISHED" and len([r for r in final if r[1] == "FINISHED"]) == 1
    assert not [r for r in final if r[1] == "RUNNING"]
    if phase == "startup":  # nothing to resume: the dead run is marked FAILED, with the reason
        assert final[0] == (dead, "FAILED") and "died" in tag(tmp_path, dead, "sage.failure")
    else:  # the dead run is the one completed, not retrained from step 0 into a second run
        assert final == [(dead, "FINISHED")] and "died" in tag(tmp_path, dead, "sage.recovered")
        assert metric_steps(tmp_path, dead, "loss") == [0, 10, 20]
        assert metric_steps(tmp_path, dead, "target_acc") == [20]
    if phase == "finish":
        assert "resuming" not in again.stdout + again.stderr or "finishing" in again.stdout + again.stderr


def test_two_ctrl_c_while_the_run_is_being_recorded_finish_the_record(tmp_path):
    proc = start(tmp_path, SAGE_PAUSE_AT="finish:4")
    wait_for(proc, "sage: paused at finish")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and proc.returncode == 0, err[-2000:]
    assert "recording the finished run" in err
    [(run_id, status)] = runs(tmp_path)
    assert status == "FINISHED" and metric_steps(tmp_path, run_id, "target_acc") == [20]


# ---------------------------------------------------------------------------- one identity, one run


def test_a_second_run_of_the_same_recipe_is_refused_while_the_first_runs(tmp_path):
    first = start(tmp_path, SAGE_PAUSE_AT="checkpoint:6")
    wait_for(first, "sage: paused at checkpoint")
    second = run(tmp_path)
    line = one_line_error(second)
    assert "is already running" in line and f"PID {first.pid}" in line and "--wait" in line
    first.communicate(timeout=120)
    assert first.returncode == 0
    waited = run(tmp_path, "--wait", "--force")  # the first is done: --wait takes the lock at once; --force trains anew
    assert waited.returncode == 0, waited.stderr
    assert [s for _, s in runs(tmp_path)] == ["FINISHED", "FINISHED"]


def test_sixteen_concurrent_first_runs_of_eight_recipes_into_one_fresh_store(tmp_path):
    procs = [start(tmp_path, "--set", f"training.seed={i % 8}", "--set", "training.steps=3",
                   "--set", "training.checkpoint_freq=2", SAGE_PAUSE_AT="startup:8") for i in range(16)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert not [err for _, err in outs if "Traceback" in err], [err[-800:] for _, err in outs if "Traceback" in err][:1]
    assert sorted(codes) == [0] * 8 + [2] * 8, codes
    assert sum("is already running" in err for _, err in outs) == 8
    assert sorted(s for _, s in runs(tmp_path)) == ["FINISHED"] * 8


# ---------------------------------------------------------------------------- checkpoints


def _interrupted_after_two_checkpoints(folder: Path) -> Path:
    proc = start(folder, "--set", "training.steps=41", SAGE_PAUSE_AT="checkpoint@10:3")
    wait_for(proc, "sage: paused at checkpoint")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    return next(folder.glob("runs/*/checkpoint.pt"))


def test_a_damaged_checkpoint_resumes_from_the_previous_good_one(tmp_path):
    ckpt = _interrupted_after_two_checkpoints(tmp_path)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    again = run(tmp_path, "--set", "training.steps=41")
    assert again.returncode == 0, again.stderr
    assert "is damaged" in again.stderr + again.stdout and "previous checkpoint (step 0)" in again.stderr + again.stdout
    assert [s for _, s in runs(tmp_path)] == ["FINISHED"]


def test_no_good_checkpoint_suggests_restart(tmp_path):
    ckpt = _interrupted_after_two_checkpoints(tmp_path)
    for path in ckpt.parent.glob("checkpoint*.pt"):
        path.write_bytes(b"garbage")
    line = one_line_error(run(tmp_path, "--set", "training.steps=41"))
    assert "damaged" in line and "--restart" in line
    assert run(tmp_path, "--set", "training.steps=41", "--restart").returncode == 0


# ---------------------------------------------------------------------------- stores and input


def test_an_unreachable_server_is_one_line_within_15_seconds(tmp_path):
    t0 = time.time()
    line = one_line_error(run(tmp_path, MLFLOW_TRACKING_URI="http://127.0.0.1:1"))
    assert "cannot reach the MLflow server at http://127.0.0.1:1" in line and time.time() - t0 < 15 + 10  # + start-up
    t0 = time.time()
    ablate = subprocess.run([sys.executable, "-m", "sage_cli", "ablate", str(QUICKSTART), "--rho", "0.01",
                             "--gamma", "0.001", "--dry-run", "--tracking-uri", "http://127.0.0.1:1"], cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert "cannot reach the MLflow server" in one_line_error(ablate) and time.time() - t0 < 25
    assert not list(tmp_path.glob("runs/*"))


def test_unwritable_and_corrupt_stores_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(run(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{blocker / 'mlflow.db'}"))
    assert "cannot write the MLflow store" in line
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    line = one_line_error(run(tmp_path))
    assert "is not an MLflow store" in line


def test_an_unwritable_output_dir_is_found_before_any_run_exists(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(run(tmp_path, "--set", f"training.output_dir={blocker / 'runs'}"))
    assert "cannot write the run folder" in line and not (tmp_path / "mlflow.db").exists()


def test_resuming_into_another_store_is_refused(tmp_path):
    proc = start(tmp_path, SAGE_PAUSE_AT="checkpoint:5")
    wait_for(proc, "sage: paused at checkpoint")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    line = one_line_error(run(tmp_path, MLFLOW_TRACKING_URI=other))
    assert "belongs to run" in line and "--restart" in line and not (tmp_path / "other.db").exists()


def test_an_empty_override_is_an_error(tmp_path):
    line = one_line_error(run(tmp_path, "--set", "optimizer.rho="))
    assert "--set 'optimizer.rho=': empty value" in line


def test_a_device_this_machine_lacks_is_found_before_any_run_exists(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")  # CI and developers' machines have none
    line = one_line_error(run(tmp_path, "--set", "training.device=cuda"))
    assert "no CUDA device" in line and not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------- a server that goes away


def _server(store_uri: str, port: int, cwd: Path) -> subprocess.Popen:
    import socket

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri, "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("mlflow server did not start")


def test_a_server_stopped_mid_run_and_started_again_loses_nothing(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"sqlite:///{tmp_path / 'server.db'}"
    server = _server(store, port, tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        proc = start(tmp_path, MLFLOW_TRACKING_URI=url, SAGE_PAUSE_AT="checkpoint@10:8")
        wait_for(proc, "sage: paused at checkpoint")
        server.terminate()
        server.wait(timeout=30)  # gone while the run goes on: checkpoint 20 and the end cannot be sent
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        assert "until `sage sync`" in out and "Traceback" not in err
        spool = next(tmp_path.glob("runs/*/mlflow-spool.jsonl"))
        assert len(spool.read_text().splitlines()) >= 3
        left = subprocess.run([sys.executable, "-m", "sage_cli", "sync"], cwd=tmp_path, env=_env(tmp_path),
                              capture_output=True, text=True, timeout=120)
        assert left.returncode == 1 and "still kept" in left.stdout  # still away: nothing lost, nothing sent
        server = _server(store, port, tmp_path)
        synced = subprocess.run([sys.executable, "-m", "sage_cli", "sync"], cwd=tmp_path, env=_env(tmp_path),
                                capture_output=True, text=True, timeout=120)
        assert synced.returncode == 0 and " sent" in synced.stdout, synced.stdout + synced.stderr
        assert not spool.exists()
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(tmp_path / "server.db") as db:
        [(run_id, status)] = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        steps = sorted({s for (s,) in db.execute("SELECT step FROM metrics WHERE run_uuid=? AND key='loss'", (run_id,))})
        final = db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid=? AND key='target_acc'", (run_id,)).fetchone()
    assert status == "FINISHED" and steps == [0, 10, 20] and final == (1,)


def test_sage_status_marks_a_run_whose_job_is_gone_failed(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from sage_cli.launch.state import JobRecord, SweepState
    from sage_cli.launch.status import job_statuses

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    run_id = client.create_run(exp, tags={"sage.sweep_id": "s-dead", "sage.recipe_hash": "h1"}).info.run_id
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process that has ended: its pid answers no more
    monkeypatch.setenv("SAGE_SWEEPS", str(tmp_path / "sweeps"))
    state = SweepState("s-dead", "s", uri, "e", launcher="local",
                       jobs={"h1": JobRecord("h1", "job", "r.json", "local", f"local:{gone.pid}")})
    [row] = job_statuses(state)
    assert row["status"] == "failed" and row["mlflow"] == "FAILED"
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "is gone without ending the run" in run.data.tags["sage.failure"]
