"""`sage ablate` / `sage sweep` with the local launcher, real MLflow stores (sqlite and a real server)."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import QUICKSTART, ROOT, TINY, child_runs, runs, sage, start_sweep, wait_for_running_job

from sage_cli.errors import UserError
from sage_cli.launch.plan import COMPONENTS, expand, load_experiment
from sage_cli.recipe import load_recipe


def test_ablation_grid_and_components_plan():
    base = load_recipe(QUICKSTART)
    grid = expand(base, {"optimizer.rho": [1e-6, 1e-5], "optimizer.gamma": [1e-6, 1e-5]}, seeds=[0, 1],
                  test_envs=[4, 5])
    assert len(grid) == 16 and len({j.hash for j in grid}) == 16
    assert {(j.recipe.optimizer.rho, j.recipe.training.seed, j.recipe.dataset.test_envs[0]) for j in grid} >= \
        {(1e-6, 0, 4), (1e-5, 1, 5)}
    parts = expand(base, {}, COMPONENTS)
    by_label = {j.label: j.recipe for j in parts}
    assert by_label["no_newton_schulz seed=0 env=5"].optimizer.polar == "none"
    assert by_label["no_scaling seed=0 env=5"].optimizer.scale_by_weight_norm is False
    assert by_label["no_noise seed=0 env=5"].optimizer.noise is False
    assert by_label["muon seed=0 env=5"].optimizer.method == "muon"
    # every SAGE variant keeps the recipe's ρ; Muon has no ρ at all
    assert all(r.optimizer.rho == base.optimizer.rho for r in by_label.values() if r.optimizer.method == "sage")
    assert not hasattr(by_label["muon seed=0 env=5"].optimizer, "rho")


def test_experiment_files_expand():
    table1 = load_experiment(ROOT / "experiments" / "table1_domainbed.yaml")
    envs = 4 + 4 + 4 + 4 + 6
    methods = {j.label.split(" ")[1] for j in table1.jobs}
    assert {"ERM", "SAGE", "IRM", "CORAL", "SAM", "GGA", "DISAM", "Fish"} <= methods
    assert len(table1.jobs) == envs * 3 * len(methods)
    table2 = load_experiment(ROOT / "experiments" / "table2_mtl.yaml")
    assert len(table2.jobs) == 2 * 24 * 3  # 2 datasets × 24 rows (every Table 2 row but STL) × 3 seeds
    assert {j.recipe.aggregator.name for j in table2.jobs} >= {"ls", "mgda", "fairgrad", "famo", "cagrad", "moco"}
    labels = {j.recipe.optimizer.label for j in table2.jobs}
    assert labels == {"erm", "sage", "samo", "fmtl", "sage-samo"}
    assert {j.recipe.optimizer.rho for j in table2.jobs if j.recipe.optimizer.method == "samo"} == {1e-3}
    # the paper's two protocols, declared: SAGE's own (the shipped recipes: the same runs as table1_domainbed)
    # and its baselines' source (VPT, oracle)
    full = load_experiment(ROOT / "experiments" / "table1_full_finetuning.yaml")
    assert sorted(j.recipe.hash() for j in full.jobs) == sorted(j.recipe.hash() for j in table1.jobs)
    vpt = load_experiment(ROOT / "experiments" / "table1_vpt_oracle.yaml")
    assert len(vpt.jobs) == len(table1.jobs)
    assert {(j.recipe.backbone.tuning, j.recipe.training.selection) for j in vpt.jobs} == {("vpt", "oracle")}
    assert not {j.recipe.hash() for j in vpt.jobs} & {j.recipe.hash() for j in table1.jobs}
    fig3 = load_experiment(ROOT / "experiments" / "figure3_officehome.yaml")
    labels = {j.label.split(" ")[1] for j in fig3.jobs}
    assert {"no_newton_schulz", "no_scaling", "no_noise", "muon", "sage"} <= labels


def test_dry_run_prints_table_and_summary_and_creates_nothing(tmp_path):
    proc = sage(["ablate", QUICKSTART, "--rho", "1e-6,1e-5", "--gamma", "1e-6,1e-5", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "4 jobs (4 to run, 0 already finished)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["ablate", QUICKSTART], "give --rho and/or --gamma"),
    (["ablate", QUICKSTART, "--rho", "x,1"], "expected a comma-separated list"),
    (["ablate", QUICKSTART, "--rho", "1e-3", "--launcher", "k8s"], "choose local or slurm"),
    (["ablate", QUICKSTART, "--rho", "1e-3", "--test-envs", "9"], "test env 9 is out of range"),
    (["sweep", "nope.yaml"], "experiment file not found"),
    (["status", "nosuchsweep"], "no sweep 'nosuchsweep'"),
    (["cancel", "nosuchsweep"], "no sweep 'nosuchsweep'"),
    (["logs", "deadbeef"], "no job 'deadbeef'"),
])
def test_bad_sweep_input_is_one_line_exit_2(tmp_path, args, message):
    proc = sage(args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_override_in_experiment_file(tmp_path):
    (tmp_path / "exp.yaml").write_text(f"recipes: [{QUICKSTART}]\nmethods:\n  bad: {{optimizer.rho: -1}}\n")
    proc = sage(["sweep", "exp.yaml", "--dry-run"], tmp_path)
    assert proc.returncode == 2 and "exp.yaml: optimizer.rho: Input should be greater than or equal to 0" in proc.stderr


def test_unknown_key_in_experiment_file(tmp_path):
    (tmp_path / "exp.yaml").write_text(f"recipes: [{QUICKSTART}]\nseedz: [0]\n")
    proc = sage(["sweep", "exp.yaml", "--dry-run"], tmp_path)
    assert proc.returncode == 2 and "seedz: unknown key (did you mean 'seeds'?)" in proc.stderr


def test_local_pool_runs_four_jobs_two_at_a_time_then_skips_them(tmp_path):
    # 40 steps: each run lasts longer than the ~1 s by which the second process's store access trails the first's
    args = ["ablate", QUICKSTART, "--rho", "1e-3,1e-2", "--gamma", "1e-3,1e-2", *TINY, "--set", "training.steps=40",
            "--max-parallel", "2"]
    # two GPUs named visible (this machine has none, so the jobs still train on the CPU): one each per job
    proc = sage(args, tmp_path, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 jobs (4 to run, 0 already finished)" in proc.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, children = child_runs(uri)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    parent_ids = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parent_ids) == 1
    parent = client.get_run(parent_ids.pop())
    assert parent.info.status == "FINISHED" and parent.data.tags["sage.sweep_id"] == children[0].data.tags["sage.sweep_id"]
    for r in children:
        assert r.data.tags["sage.attempt"] == "1" and r.data.tags["sage.scheduler_job_id"].startswith("local:")
        assert "env5_in_acc" in r.data.metrics
    assert len({r.data.tags["sage.recipe_hash"] for r in children}) == 4  # each job tagged with its own identity
    # the two processes overlapped, each on its own GPU
    spans = sorted((r.info.start_time, r.info.end_time, r.data.tags["sage.cuda_visible_devices"]) for r in children)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    assert all(a[2] != b[2] for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    assert sorted(s[2] for s in spans) == ["0", "0", "1", "1"]

    again = sage(args, tmp_path)
    assert again.returncode == 0 and "4 jobs (0 to run, 4 already finished)" in again.stdout
    assert len(child_runs(uri)[1]) == 4
    status = sage(["status", children[0].data.tags["sage.sweep_id"]], tmp_path, env={"COLUMNS": "200"})
    assert status.returncode == 0 and status.stdout.strip().splitlines()[-1] == "4 finished"
    log = sage(["logs", children[0].data.tags["sage.recipe_hash"][:10]], tmp_path)
    assert log.returncode == 0 and "target env 5 accuracy" in log.stdout


def test_ctrl_c_stops_local_sweep_and_marks_runs_killed(tmp_path):
    proc, uri = start_sweep(tmp_path, "ablate", QUICKSTART, "--rho", "1e-3,2e-3", "--set", "training.steps=5000",
                            "--set", "training.checkpoint_freq=50")
    try:
        wait_for_running_job(tmp_path, uri)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:  # never leave a 5000-step sweep (or its job processes) behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for state in tmp_path.glob("sweeps/*/sweep.json"):
            for job in json.loads(state.read_text())["jobs"].values():
                if job["scheduler_id"].startswith("local:"):
                    try:
                        os.kill(int(job["scheduler_id"].split(":")[1]), signal.SIGKILL)
                    except OSError:
                        pass
    assert proc.returncode == 130, out + err
    client, children = child_runs(uri)
    assert [r.info.status for r in children] == ["KILLED"]  # the second job never started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_against_a_real_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "art"),
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import urllib.request

        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        work = tmp_path / "work"
        work.mkdir()
        proc = sage(["ablate", QUICKSTART, "--rho", "1e-3,2e-3", *TINY, "--tracking-uri", uri, "--max-parallel", "2"], work)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client, children = child_runs(uri)
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        assert {a.path for a in client.list_artifacts(children[0].info.run_id)} == {"recipe.yaml", "results.jsonl",
                                                                                  "checkpoint.pt"}
        assert not (work / "mlflow.db").exists()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _writer(uri: str, i: int) -> None:
    from sage_cli.track.mlflow_run import MlflowRun

    run = MlflowRun(uri, "concurrency", f"writer-{i}", {"sage.recipe_hash": f"h{i}"})
    run.log_params({"i": i})
    for step in range(10):
        run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 10}, step=step)
    run.finish()


def test_32_concurrent_jobs_into_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the store and experiment are created once, in another process, before the fan-out
    subprocess.run([sys.executable, "-c", f"from sage_cli.track.mlflow_run import prepare_store; "
                    f"prepare_store('{uri}', 'concurrency')"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    import mlflow.tracking  # noqa: F401  (imported once, inherited by the forked writers)

    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(uri, i)) for i in range(32)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 32
    client, all_runs = runs(uri)
    assert len(all_runs) == 32 and {r.info.status for r in all_runs} == {"FINISHED"}
    for r in all_runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == list(range(10))
        assert len(client.get_metric_history(r.info.run_id, "acc")) == 10


def test_sage_cancel_stops_a_local_sweep_and_starts_nothing_after(tmp_path):
    """Before, the launcher started the next queued job in place of the cancelled one (it ran to FINISHED while
    `sage status` said cancelled), called the cancelled job failed and exited 0. The sweep runs as a script's
    background job: its jobs ignore SIGINT, and were left RUNNING when `sage cancel` stopped them by SIGINT."""
    proc, uri = start_sweep(tmp_path, "ablate", QUICKSTART, "--rho", "1e-3,2e-3,3e-3", "--set", "training.steps=5000",
                            "--set", "training.checkpoint_freq=50", sigint_ignored=True)
    try:
        wait_for_running_job(tmp_path, uri)
        sweep_id = next(tmp_path.glob("sweeps/*/sweep.json")).parent.name
        cancel = sage(["cancel", sweep_id], tmp_path)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert cancel.returncode == 0 and "cancelled 3 job(s)" in cancel.stdout, cancel.stdout + cancel.stderr
    assert proc.returncode == 1 and "3 of 3 jobs did not finish (3 cancelled)" in err, out + err
    client, children = child_runs(uri)
    assert [r.info.status for r in children] == ["KILLED"]  # no queued job started after the cancel
    [log] = (tmp_path / "sweeps" / sweep_id / "logs").glob("*.log")
    assert "is marked KILLED and its checkpoint kept" in log.read_text()  # the job stopped itself, not SIGKILL
    status = sage(["status", sweep_id], tmp_path, env={"COLUMNS": "200"})
    assert status.stdout.strip().splitlines()[-1] == "3 cancelled"
    parent = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
              if r.data.tags.get("sage.sweep_parent") == "true"]
    assert [p.info.status for p in parent] == ["KILLED"]


def test_sweep_set_shrinks_every_job_and_is_part_of_its_identity(tmp_path):
    exp = str(ROOT / "experiments" / "table1_digits.yaml")
    plain = sage(["sweep", exp, "--dry-run", "--seeds", "0", "--test-envs", "0"], tmp_path, env={"COLUMNS": "200"})
    small = sage(["sweep", exp, "--dry-run", "--seeds", "0", "--test-envs", "0", "--set", "training.steps=40",
                  "--set", "training.checkpoint_freq=10"], tmp_path, env={"COLUMNS": "200"})
    assert plain.returncode == 0 and small.returncode == 0, small.stderr
    assert "4 jobs (4 to run" in small.stdout  # ERM, SAM, SAGE and BOA after SAM
    import re

    hashes = set(re.findall(r"\b[0-9a-f]{16}\b", plain.stdout))
    assert len(hashes) == 4 and hashes.isdisjoint(re.findall(r"\b[0-9a-f]{16}\b", small.stdout))
    from sage_cli.launch.plan import load_experiment

    jobs = load_experiment(exp, [0], [0], overrides={"training.steps": 40}).jobs
    assert {j.recipe.training.steps for j in jobs} == {40} and {j.recipe.optimizer.method for j in jobs} == {
        "erm", "sam", "sage", "boa"}
    assert "--set 'training.steps'" in one_line(sage(["sweep", exp, "--dry-run", "--set", "training.steps"], tmp_path))


def one_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip()


def test_a_redirected_sweep_says_each_job_as_it_ends(tmp_path):
    proc = sage(["ablate", QUICKSTART, "--rho", "1e-3,2e-3", *TINY], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ends = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in ends] == ["[1/2", "[2/2"] and all(line.endswith(": finished")
                                                                          for line in ends), proc.stdout


def test_sweep_status_and_report_agree_on_a_job_reused_from_an_earlier_run(tmp_path):
    """A job whose identity already had a FINISHED run (an earlier `sage run`) is skipped by the sweep and
    finished for `sage status`; the report counts it too (before: 'not started', the cell at n = 1, no ±)."""
    short = ["--set", "training.steps=40", "--set", "training.checkpoint_freq=10"]
    first = sage(["run", QUICKSTART, *short, "--set", "optimizer.method=erm"], tmp_path)
    assert first.returncode == 0, first.stderr
    exp = tmp_path / "reuse.yaml"
    exp.write_text(f"name: reuse\nrecipes: [{QUICKSTART}]\nmethods:\n  ERM: {{optimizer.method: erm}}\n"
                   "overrides: {training.steps: 40, training.checkpoint_freq: 10}\nseeds: [0, 1]\n")
    swept = sage(["sweep", str(exp)], tmp_path)
    assert swept.returncode == 0 and "2 jobs (1 to run, 1 already finished)" in swept.stdout, swept.stdout
    status = sage(["status", "reuse"], tmp_path, env={"COLUMNS": "200"})
    assert status.stdout.strip().splitlines()[-1] == "2 finished"
    report = json.loads(sage(["report", "reuse", "--format", "json"], tmp_path).stdout)
    [cell] = [r for r in report["dg"] if r["method"] == "ERM" and r["test_env"] == 5]
    assert cell["n"] == 2 and cell["sem"] is not None and report["not_finished"] == []


@pytest.mark.parametrize("methods, message", [
    ("{A: {optimizer.method: boa, optimizer.init_from: B}, B: {optimizer.method: boa, optimizer.init_from: A}}",
     "the methods A, B start from each other in a circle"),
    ("{SAM: {optimizer.method: sam}, BOA: {optimizer.method: boa, optimizer.init_from: SAM}}",
     "optimizer.init_from: 2 jobs to start from at seed 0"),  # SAM's ρ grid: which of the two?
])
def test_a_method_started_from_another_is_planned_only_when_its_start_is_one_job(tmp_path, methods, message):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"recipes: [{QUICKSTART}]\nmethods: {methods}\ngrid: {{optimizer.rho: [0.01, 0.05]}}\n")
    with pytest.raises(UserError, match=message):
        load_experiment(exp, [0], [5])
