"""The input pipeline on a generated PACS-layout folder: the worker count never changes a result, a run stopped
mid-way with batches prefetched resumes bit-identically, and evaluation through the uint8 cache gives exactly
the accuracies of decoding with torchvision's ToTensor + Normalize (the pipeline before the cache)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures import make_tree

from sage_cli.errors import Preempted, UserError
from sage_cli.recipe import load_recipe
from sage_cli.train.dg import load_dg_data, train_dg

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs")
    make_tree(root, "pacs", per_class=10, size=40)
    return root


def _recipe(root, **extra):
    values = {"dataset.name": "pacs", "dataset.root": str(root), "dataset.image_size": 32, "dataset.test_envs": [0],
              "training.steps": 12, "training.checkpoint_freq": 5, "training.batch_size": 6,
              "optimizer.gamma": 0.05}  # SAGE's noise on: its generator must carry over too
    values.update(extra)
    return load_recipe(QUICKSTART, values)


def _metrics(history):
    return [{k: v for k, v in r.metrics.items() if not k.endswith("_time")} for r in history]  # not timings


def _same_model(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_worker_count_never_changes_a_run(root, tmp_path):
    runs = {w: train_dg(_recipe(root, **{"dataset.workers": w})) for w in (0, 2)}
    assert _metrics(runs[0].history) == _metrics(runs[2].history)
    assert _same_model(runs[0].model, runs[2].model)
    uniform = {w: train_dg(_recipe(root, **{"dataset.workers": w, "training.batch_sampling": "uniform"}))
               for w in (0, 2)}
    assert _metrics(uniform[0].history) == _metrics(uniform[2].history)


def test_stopped_between_checkpoints_with_workers_resumes_bit_identically(root, tmp_path):
    recipe = _recipe(root, **{"dataset.workers": 2})
    whole = train_dg(recipe)
    ckpt = tmp_path / "checkpoint.pt"
    steps = []

    def stop_after_step_7():
        return len(steps) >= 8

    with pytest.raises(Preempted) as stopped:
        train_dg(recipe, checkpoint_path=ckpt, progress=steps.append, should_stop=stop_after_step_7)
    assert stopped.value.step == 7  # saved mid-way, batches of steps 8+ already planned and loading
    resumed = train_dg(recipe, checkpoint_path=ckpt)
    assert resumed.resumed_from == 8
    assert _metrics(resumed.history) == _metrics(whole.history)
    assert _same_model(resumed.model, whole.model)


def _sage(cwd, root, *extra, wait=True):
    args = [sys.executable, "-m", "sage_cli", "run", str(QUICKSTART), "--set", "dataset.name=pacs",
            "--set", f"dataset.root={root}", "--set", "dataset.image_size=32", "--set", "training.steps=40",
            "--set", "training.checkpoint_freq=5", "--set", "training.batch_size=6", "--set", "optimizer.gamma=0.05",
            "--set", "dataset.workers=2", "--test-env", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if wait:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_killed_run_with_workers_reruns_to_the_uninterrupted_result(root, tmp_path):
    """SIGKILL (process group: the loader's workers too) after a checkpoint, then `sage run` again."""
    from mlflow.tracking import MlflowClient

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    assert _sage(whole, root).returncode == 0
    proc = _sage(killed, root, wait=False)
    results = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list(killed.glob("runs/*/results.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 3:  # steps 0, 5, 10 evaluated
            results = found[0]
            break
        time.sleep(0.05)
    assert results is not None, "the run wrote no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = _sage(killed, root)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from step" in rerun.stdout

    def final(cwd):
        client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
        run = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])][0]
        keys = [k for k in run.data.metrics if k not in ("step_time", "resumed_from_step")]
        return {k: sorted({(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)}) for k in keys}

    assert final(killed) == final(whole)


# ------------------------------------------------------------------------------------------ evaluation cache
def _decoded_accuracy(model, split, normalization_mean, normalization_std, size):
    """Accuracy as sage computed it before the cache: PIL → Resize → ToTensor → Normalize, batches of 256."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(normalization_mean, normalization_std)])
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(split), 256):
            idx = split.indices[i:i + 256]
            x = torch.stack([tf(Image.open(split.env.samples[int(j)][0]).convert("RGB")) for j in idx])
            correct += int((model(x).argmax(1) == split.env.labels[idx]).sum())
    return correct / len(split)


@pytest.mark.parametrize("block_images", [None, 3])
def test_normalising_on_the_device_is_torchvisions_arithmetic(root, monkeypatch, block_images):
    from PIL import Image
    from torchvision import transforms as T

    from sage_cli.data import domainbed
    from sage_cli.data.domainbed import normalization_for

    if block_images:  # a CPU normalises block by block: blocks of 3 images, the last one short
        monkeypatch.setattr(domainbed, "_CPU_BLOCK_BYTES", block_images * 3 * 32 * 32 * 4)
    for name in ("imagenet", "clip"):
        norm = normalization_for(name)
        before = T.Compose([T.Resize((32, 32)), T.ToTensor(), T.Normalize(norm.mean, norm.std)])
        images = [Image.open(p).convert("RGB") for p in sorted((root / "PACS" / "photo" / "dog").iterdir())[:4]]
        pixels = torch.stack([T.PILToTensor()(T.Resize((32, 32))(im)) for im in images])
        expect = torch.stack([before(im) for im in images])
        assert torch.equal(norm(pixels), expect)  # bit for bit
        out = torch.full(expect.shape, float("nan"))
        assert norm(pixels, out) is out and torch.equal(out, expect)
        assert norm(pixels[:0]).shape == (0, 3, 32, 32)


def test_cache_holds_the_decoded_pixels_and_gives_the_decoded_accuracies(root, tmp_path):
    recipe = _recipe(root, **{"training.steps": 6, "dataset.cache_dir": str(tmp_path / "cache")})
    data = load_dg_data(recipe)
    env = data.splits[1]["in"].env
    assert env.pixels is None  # built at the first evaluation, not before a run exists
    data.eval_cache.ensure(0, show_progress=False)
    assert env.pixels is not None and env.pixels.dtype.name == "uint8"
    for i in (0, 7, len(env) - 1):
        assert torch.equal(torch.from_numpy(env.pixels[i].copy()), env.load(i, train=False)[0])
    cached = train_dg(recipe, data=data)
    decoded = train_dg(_recipe(root, **{"training.steps": 6, "dataset.eval_cache": False, "dataset.workers": 2}))
    assert _metrics(cached.history) == _metrics(decoded.history)
    last = cached.history[-1].metrics
    for i, split in enumerate(data.splits):
        for name in ("in", "out"):
            expect = _decoded_accuracy(cached.model, split[name], env.normalize.mean, env.normalize.std, 32)
            assert last[f"env{i}_{name}_acc"] == expect


def test_cache_is_built_once_and_rebuilt_when_the_folder_changes(root, tmp_path, capsys):
    cache = tmp_path / "cache"
    recipe = _recipe(root, **{"dataset.cache_dir": str(cache), "dataset.workers": 0, "training.steps": 1})
    train_dg(recipe)
    assert "building the evaluation cache: 120 images at 32²" in capsys.readouterr().err
    train_dg(recipe)
    assert "building" not in capsys.readouterr().err
    assert len(list(cache.iterdir())) == 2  # the cache and its lock file, nothing half-written
    other = tmp_path / "other"
    base = make_tree(other, "pacs", per_class=10, size=40)
    (base / "photo" / "dog" / "000.jpg").unlink()
    train_dg(_recipe(other, **{"dataset.cache_dir": str(cache), "dataset.workers": 0, "training.steps": 1}))
    assert "building the evaluation cache: 119 images" in capsys.readouterr().err
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2


def test_datasets_prepare_builds_the_cache_a_run_then_uses(root, tmp_path):
    from typer.testing import CliRunner

    from sage_cli.cli import app

    cache = tmp_path / "cache"
    args = ["datasets", "prepare", "pacs", "--root", str(root), "--image-size", "32", "--cache-dir", str(cache),
            "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "evaluation cache of pacs at 32²: 120 images" in result.output
    [folder] = [p for p in cache.iterdir() if p.is_dir()]
    data = load_dg_data(_recipe(root, **{"dataset.cache_dir": str(cache)}))
    assert data.eval_cache.built and data.eval_cache.folder == folder
    bad = CliRunner().invoke(app, ["datasets", "prepare", "nyuv2", "--root", str(root)])
    assert bad.exit_code == 2 and "image folders" in bad.output


def test_cache_without_room_is_one_line_and_writes_nothing(root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=r"the evaluation cache needs 0\.0 GB under .*dataset.cache_dir"):
        load_dg_data(_recipe(root, **{"dataset.cache_dir": str(cache)}))
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_pipeline_error_in_a_worker_is_one_line(tmp_path):
    base = make_tree(tmp_path, "pacs")
    (base / "photo" / "dog" / "000.jpg").write_bytes(b"not an image")
    recipe = load_recipe(QUICKSTART, {"dataset.name": "pacs", "dataset.root": str(tmp_path), "dataset.image_size": 32,
                                      "dataset.test_envs": [0], "dataset.workers": 2, "dataset.eval_cache": False,
                                      "training.steps": 3})
    with pytest.raises(UserError) as err:
        train_dg(recipe)
    assert str(err.value).startswith("cannot read image") and "\n" not in str(err.value)


_SERVER_IMPORTS = """
import json, sys, time
from pathlib import Path
from sage_cli.catalog import card
from sage_cli.data.domainbed import FolderDataset
from sage_cli.data.pipeline import Pipeline

def read(path):
    try:
        return path.read_bytes()
    except OSError:  # a thread or a short-lived child that ended meanwhile
        return b""

def children(pid):
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in read(t / "children").split()]

if __name__ == "__main__":
    pipeline = Pipeline(FolderDataset(sys.argv[1], 32, card=card("pacs")).datasets, 2)  # nothing streamed yet
    deadline = time.monotonic() + 120
    # the server's command line, spelt in two pieces: a child forked but not yet exec'd shows this script's
    server, needle = None, b"from multiprocessing." + b"forkserver import main"
    while server is None and time.monotonic() < deadline:
        server = next((c for c in children("self") if needle in read(Path(f"/proc/{c}/cmdline"))), None)
    wanted = {"libtorch_cpu": False, "PIL/_imaging": False, "torchvision/_C": False}
    while not all(wanted.values()) and time.monotonic() < deadline:
        maps = Path(f"/proc/{server}/maps").read_text()
        wanted = {lib: lib in maps for lib in wanted}
        time.sleep(0.2)
    print(json.dumps({"loaded": sorted(lib for lib, found in wanted.items() if found), "workers": len(children(server))}))
"""


def test_workers_fork_from_a_server_that_already_imported_what_they_need(root):
    # each worker importing torch, torchvision and PIL itself costs ~4 s of CPU; the pool's fork server does it
    # once, as soon as the pool exists (before its first item, while the run sets up)
    proc = subprocess.run([sys.executable, "-c", _SERVER_IMPORTS, str(root)], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"loaded": ["PIL/_imaging", "libtorch_cpu", "torchvision/_C"], "workers": 0}


def test_mtl_batches_through_the_workers_are_the_same(tmp_path):
    from mtl_fixtures import make_dense

    from sage_cli.mtl.train import train_mtl

    make_dense(tmp_path, "nyuv2", n_train=10, n_val=2)
    results = {}
    for workers in (0, 2):
        recipe = load_recipe(ROOT / "recipes" / "nyuv2.yaml", {
            "dataset.root": str(tmp_path), "dataset.workers": workers, "backbone.name": "mtan_narrow",
            "training.epochs": 2, "training.batch_size": 4, "optimizer.gamma": 0.05})
        results[workers] = train_mtl(recipe)
    assert _metrics(results[0].history) == _metrics(results[2].history)
    assert _same_model(results[0].model, results[2].model)


def test_a_run_prints_and_tags_what_it_resolved(root, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from sage_cli.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU named: the tag says so
    result = CliRunner().invoke(app, ["run", str(QUICKSTART), "--set", "dataset.name=pacs", "--set",
                                      f"dataset.root={root}", "--set", "dataset.image_size=16", "--set",
                                      "dataset.workers=2", "--set", "training.steps=3", "--test-env", "0"])
    assert result.exit_code == 0, result.output
    assert "device cpu · precision tf32 (no TF32 on a CPU: fp32) · deterministic off · loader workers 2" in result.output
    assert result.output.count("per-domain gradients: one backward pass for all domains") == 1  # said once, not per checkpoint
    run_id, uri = result.output.split("mlflow run ")[1].split()[0], result.output.split(" FINISHED in ")[1].split()[0]
    tags = MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    assert (tags["sage.device"], tags["sage.precision"], tags["sage.workers"]) == ("cpu", "tf32", "2")
    assert tags["sage.deterministic"] == "false" and tags["sage.per_domain_path"] == "one-backward"
    assert tags["sage.cuda_visible_devices"] == ""


def test_idle_openmp_threads_sleep_only_beside_loader_workers(root, monkeypatch):
    from sage_cli.openmp import quiet_idle_threads

    for overrides, expected in [({}, None), ({"dataset.workers": 0}, None), ({"dataset.workers": 2}, "PASSIVE")]:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        digits = load_recipe(QUICKSTART, overrides)
        quiet_idle_threads(digits.dataset)  # in-memory data: OpenMP's default stays
        assert "OMP_WAIT_POLICY" not in os.environ
        quiet_idle_threads(_recipe(root, **overrides).dataset)
        assert os.environ.get("OMP_WAIT_POLICY") == (expected if overrides else "PASSIVE")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    quiet_idle_threads(_recipe(root).dataset)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # what the user set stays
