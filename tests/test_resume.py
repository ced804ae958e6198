"""Checkpoint and resume: a run killed with SIGKILL mid-way and rerun ends bit-identical to an
uninterrupted run, in the same MLflow run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
ARGS = ["--set", "training.steps=60", "--set", "training.checkpoint_freq=10", "--set", "training.batch_size=16",
        "--set", "optimizer.gamma=0.05"]  # noise on: the generator's state must survive the kill too
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _run(cwd, wait=True):
    cmd = [sys.executable, "-m", "sage_cli", "run", str(QUICKSTART), *ARGS]
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _runs(cwd):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    return client, [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def _final_metrics(client, run):
    keys = [k for k in run.data.metrics if k != "step_time" and k != "resumed_from_step"]
    # a kill between logging a checkpoint and saving it re-logs that step with the same values: dedupe
    return {k: sorted({(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)})
            for k in sorted(keys)}


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    assert _run(straight).returncode == 0

    proc = _run(killed, wait=False)
    meta = next(killed.glob("runs/*/checkpoint.json"), None)
    deadline = time.time() + 120
    while time.time() < deadline:
        meta = next(killed.glob("runs/*/checkpoint.json"), None)
        if meta is not None and json.loads(meta.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = json.loads(meta.read_text())["step"]
    assert 20 <= step_at_kill < 59, "the kill must land mid-run"

    second = _run(killed)
    assert second.returncode == 0, second.stderr
    assert f"resuming from step {step_at_kill + 1}" in second.stdout

    client_a, runs_a = _runs(straight)
    client_b, runs_b = _runs(killed)
    assert len(runs_b) == 1, "the rerun continues the same MLflow run"
    run_b = runs_b[0]
    assert run_b.info.status == "FINISHED"
    assert int(run_b.data.tags["sage.resumed_from_step"]) == step_at_kill + 1
    a, b = _final_metrics(client_a, runs_a[0]), _final_metrics(client_b, run_b)
    assert a.keys() == b.keys()
    for key in a:  # bit for bit, at every checkpoint
        assert a[key] == b[key], key


def test_a_gpu_checkpoint_resumes_on_a_cpu_with_a_note(tmp_path, capsys):
    """A checkpoint written on a GPU holds a CUDA RNG state and a CUDA noise generator; on a CPU-only process
    (this one) the run resumes from it, leaving those out with one note each."""
    import torch

    from sage_cli.optim.noise import NoiseSource
    from sage_cli.recipe import load_recipe
    from sage_cli.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from sage_cli.train.dg import train_dg

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this test needs a process without CUDA")
    recipe = load_recipe(QUICKSTART, {"training.steps": 6, "training.checkpoint_freq": 2, "optimizer.gamma": 0.05})
    ckpt = tmp_path / "checkpoint.pt"
    steps = []
    try:
        train_dg(recipe, checkpoint_path=ckpt, progress=steps.append, should_stop=lambda: len(steps) >= 3)
    except Exception as exc:  # Preempted at step 2 (a checkpoint)
        assert type(exc).__name__ == "Preempted"
    state = load_checkpoint(ckpt)
    cuda_philox = torch.zeros(16, dtype=torch.uint8)  # what torch.cuda.get_rng_state() returns: seed and offset
    state["rng"]["cuda"] = cuda_philox
    noise = state["parts"]["optimizer"]["extra"]
    noise["generators"]["cuda:1"] = cuda_philox  # a generator saved on the second GPU
    save_checkpoint(ckpt, state, meta={"step": state["step"], "finished": False, "recipe_hash": recipe.hash()})
    capsys.readouterr()
    resumed = train_dg(recipe, checkpoint_path=ckpt)
    err = capsys.readouterr().err
    assert resumed.resumed_from == 3 and [r.step for r in resumed.history] == [0, 2, 4, 5]
    assert "comes from a GPU run and no CUDA device is visible" in err
    assert "cuda:1 noise generator cannot continue without a CUDA device" in err
    # the older format (every visible GPU's state) loads too, and a CPU generator state comes back exactly
    set_rng_state({**rng_state(), "cuda": [cuda_philox, cuda_philox]})
    source = NoiseSource(seed=3)
    source.normal_like(torch.zeros(2))
    saved = source.state_dict()
    again = NoiseSource(seed=0)
    again.load_state_dict(saved)
    assert torch.equal(again.normal_like(torch.zeros(5)), source.normal_like(torch.zeros(5)))
