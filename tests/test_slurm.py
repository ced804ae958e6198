"""Sweeps on a real single-node SLURM cluster (started by .ci/run through scripts/slurm-up.sh).

Outside CI these tests skip when no cluster answers; in CI (CI=true) a missing cluster is a failure.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from sweep_helpers import QUICKSTART, TINY, child_runs, sage

SLURM = ["--launcher", "slurm", "--set", "slurm.mem_gb=1", "--set", "slurm.cpus_per_task=1"]


def _cluster_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module", autouse=True)
def cluster():
    if not _cluster_up():
        if os.environ.get("CI"):
            pytest.fail("no SLURM cluster answers: .ci/run starts one with scripts/slurm-up.sh")
        pytest.skip("no SLURM cluster (run scripts/slurm-up.sh as root)")


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _squeue(job_id):
    out = subprocess.run(["squeue", "--states=all", "-h", "-r", "-o", "%T", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, timeout=10).stdout.split()
    return out[0] if out else ""


def _sweep_state(tmp_path):
    [path] = list((tmp_path / "sweeps").glob("*/sweep.json"))
    return json.loads(path.read_text())


def _one_job(state):
    [job] = state["jobs"].values()
    return job


def test_ablation_submits_arrays_finishes_and_is_not_resubmitted(tmp_path):
    args = ["ablate", QUICKSTART, "--rho", "1e-3,1e-2", "--gamma", "1e-3,1e-2", *TINY, *SLURM]
    t0 = time.time()
    proc = sage(args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.time() - t0 < 60, "submission must not wait for the jobs"
    assert "submitted 4 jobs to SLURM as array(s)" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished = _wait(lambda: [r for r in child_runs(uri)[1] if r.info.status == "FINISHED"] if len(
        [r for r in child_runs(uri)[1] if r.info.status == "FINISHED"]) == 4 else None, 300, "4 FINISHED runs")
    ids = {r.data.tags["sage.scheduler_job_id"] for r in finished}
    assert len(ids) == 4 and all("_" in i for i in ids)  # array tasks
    status = sage(["status", _sweep_state(tmp_path)["id"]], tmp_path)
    assert status.stdout.strip().splitlines()[-1] == "4 finished"

    again = sage(args, tmp_path)
    assert again.returncode == 0
    assert "4 jobs (0 to run, 4 already finished)" in again.stdout and "nothing to run" in again.stdout


def _start_long_job(tmp_path, steps, freq=20):
    proc = sage(["ablate", QUICKSTART, "--rho", "3e-3", "--set", f"training.steps={steps}",
                 "--set", f"training.checkpoint_freq={freq}", "--set", "training.batch_size=8", *SLURM], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    state = _sweep_state(tmp_path)
    job = _one_job(state)
    ckpt = tmp_path / "sweeps" / state["id"] / "runs" / job["hash"] / "checkpoint.json"
    return state, job, ckpt


def _release(job_id):
    """A requeued job waits ~2 min (BeginTime); make it eligible now."""
    _wait(lambda: _squeue(job_id) == "PENDING", 60, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={job_id.split('_')[0]}", "StartTime=now"], check=True, timeout=10)


def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    state, job, ckpt = _start_long_job(tmp_path, steps=600)
    _wait(lambda: ckpt.is_file() and json.loads(ckpt.read_text())["step"] >= 20, 180, "a checkpoint")
    subprocess.run(["scontrol", "requeue", job["scheduler_id"].split("_")[0]], check=True, timeout=10)
    _release(job["scheduler_id"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = _wait(lambda: next((r for r in child_runs(uri)[1] if r.info.status == "FINISHED"), None), 300, "FINISHED")
    assert int(run.data.tags["sage.resumed_from_step"]) >= 21
    assert run.data.tags["sage.attempt"] == "2"
    assert len(child_runs(uri)[1]) == 1  # the same MLflow run


def test_preemption_signal_saves_checkpoint_requeues_and_resumes(tmp_path):
    state, job, ckpt = _start_long_job(tmp_path, steps=3000, freq=1000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _wait(lambda: any(r.info.status == "RUNNING" for r in child_runs(uri)[1]), 120, "the job to start")
    time.sleep(3)
    subprocess.run(["scancel", "--signal=USR2", job["scheduler_id"].split("_")[0]], check=True, timeout=10)
    run = _wait(lambda: next((r for r in child_runs(uri)[1] if "sage.preempted_at_step" in r.data.tags), None), 60,
                "the preemption checkpoint")
    preempted = int(run.data.tags["sage.preempted_at_step"])
    assert json.loads(ckpt.read_text())["step"] == preempted  # saved between steps, not at a checkpoint_freq
    _release(job["scheduler_id"])
    resumed = _wait(lambda: next((r for r in child_runs(uri)[1] if "sage.resumed_from_step" in r.data.tags), None),
                    120, "the resumed run")
    assert int(resumed.data.tags["sage.resumed_from_step"]) == preempted + 1
    cancel = sage(["cancel", state["id"]], tmp_path)
    assert cancel.returncode == 0


def test_cancel_is_reported_by_status_within_60s(tmp_path):
    state, job, _ = _start_long_job(tmp_path, steps=20000, freq=5000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _wait(lambda: any(r.info.status == "RUNNING" for r in child_runs(uri)[1]), 120, "the job to start")
    assert sage(["status", state["id"]], tmp_path).stdout.strip().splitlines()[-1] == "1 running"
    t0 = time.time()
    assert sage(["cancel", state["id"]], tmp_path).returncode == 0
    _wait(lambda: sage(["status", state["id"]], tmp_path).stdout.strip().splitlines()[-1] == "1 cancelled", 60,
          "status to say cancelled")
    assert time.time() - t0 < 60
    _wait(lambda: _squeue(job["scheduler_id"]) in ("", "CANCELLED", "COMPLETED"), 60, "the job to leave the queue")
    assert [r.info.status for r in child_runs(uri)[1]] == ["KILLED"]


def test_job_given_a_gpu_it_cannot_see_fails_in_one_line(tmp_path):
    """slurm-up.sh declares one GPU with no device behind it: SLURM schedules the job, sage refuses the CPU."""
    proc = sage(["ablate", QUICKSTART, "--rho", "3e-3", *TINY, *SLURM, "--set", "slurm.gpus_per_node=1"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = _one_job(_sweep_state(tmp_path))
    _wait(lambda: _squeue(job["scheduler_id"]) == "FAILED", 180, "the job to fail")
    out = Path(job["log_path"])
    err = out.with_name(out.name.replace("_log.out", "_log.err")).read_text()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: this job was given a GPU, but no CUDA device is visible here (CUDA_VISIBLE_DEVICES="
                     + lines[0].split("CUDA_VISIBLE_DEVICES=")[1]]
    assert lines[0].endswith("not training on the CPU") and "Traceback" not in err
    assert child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")[1] == []  # refused before any run existed
    status = sage(["status", _sweep_state(tmp_path)["id"]], tmp_path)
    assert status.stdout.strip().splitlines()[-1] == "1 failed"


def test_gpu_recipe_asks_for_one_gpu_and_a_cpu_per_worker():
    from sage_cli.launch.slurm import GPU_JOB_WORKERS, job_resources
    from sage_cli.recipe import load_recipe

    cpu = load_recipe(QUICKSTART)
    gpu = load_recipe(QUICKSTART, {"training.device": "auto", "slurm.gpus_per_node": 1})
    assert job_resources(cpu.slurm, cpu) == (2, 0)
    assert job_resources(gpu.slurm, gpu) == (GPU_JOB_WORKERS + 1, 1)
    four = load_recipe(QUICKSTART, {"slurm.gpus_per_node": 1, "dataset.workers": 4})
    assert job_resources(four.slurm, four) == (5, 1)
    given = load_recipe(QUICKSTART, {"slurm.gpus_per_node": 2, "slurm.cpus_per_task": 3})
    assert job_resources(given.slurm, given) == (3, 2)


def test_boa_is_submitted_to_wait_for_its_sam_start(tmp_path):
    exp = tmp_path / "boa.yaml"
    exp.write_text(f"name: boa\nrecipes: [{QUICKSTART}]\noverrides: {{training.steps: 3, training.checkpoint_freq: 2, "
                   "training.batch_size: 8}\nmethods:\n  SAM: {optimizer.method: sam}\n  BOA: {optimizer.method: boa, "
                   "optimizer.init_from: SAM, optimizer.reflections: 1, optimizer.krylov_dim: 2, "
                   "optimizer.loss_batches: 1}\nseeds: [0]\ntest_envs: [5]\n")
    proc = sage(["sweep", str(exp), *SLURM], tmp_path, env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "(1 of them wait for the job they start from)" in proc.stdout, proc.stdout
    jobs = {j["label"].split()[1]: j for j in _sweep_state(tmp_path)["jobs"].values()}
    scripts = {p.name.split("_submission")[0]: p.read_text() for p in (tmp_path / "sweeps").glob("*/slurm/*_submission.sh")}
    boa_script = next(text for name, text in scripts.items() if name == jobs["BOA"]["scheduler_id"])
    assert f"--dependency=afterok:{jobs['SAM']['scheduler_id']}" in boa_script
    assert "--kill-on-invalid-dep=yes" in boa_script
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _wait(lambda: {r.data.tags["sage.label"]: r for r in child_runs(uri)[1] if r.info.status == "FINISHED"}
                 if len([r for r in child_runs(uri)[1] if r.info.status == "FINISHED"]) == 2 else None, 300,
                 "SAM and BOA FINISHED")
    assert done["BOA"].info.start_time >= done["SAM"].info.end_time
