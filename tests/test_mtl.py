"""MTL end to end on tiny generated NYU-v2 / Cityscapes trees and on the embedded benchmarks."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mtl_fixtures import make_dense
from typer.testing import CliRunner

from sage_cli.cli import app
from sage_cli.errors import Preempted, UserError
from sage_cli.mtl.aggregators import MGDA
from sage_cli.mtl.data import DENSE, DenseDataset, horizontal_flip, random_scale_crop, toy_losses
from sage_cli.mtl.losses import depth_loss, normal_loss, segmentation_loss
from sage_cli.mtl.models import MTAN
from sage_cli.mtl.train import load_mtl_data, train_mtl
from sage_cli.optim import SAGE, polar
from sage_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl")
    make_dense(root, "nyuv2")
    make_dense(root, "cityscapes")
    return root


def _recipe(name, root, tmp_path, **values):
    radius = {} if values.get("optimizer.method") == "erm" else {"optimizer.rho": 1e-2}  # erm has no ρ
    return load_recipe(ROOT / "recipes" / f"{name}.yaml", {
        "dataset.root": str(root), "backbone.name": "mtan_narrow", "training.epochs": 2, "training.batch_size": 2,
        "training.report_epochs": 2, "training.output_dir": str(tmp_path), **radius, **values})


def test_mtan_has_the_references_parameter_count():
    n = sum(p.numel() for p in MTAN(("segmentation", "depth", "normal"), 13).parameters())
    assert n == 44_229_073  # ≈ 44.2 M (the references add 3 for UW's log-variances)
    model = MTAN(("segmentation", "depth"), 7, filters=(8, 16, 32, 64, 64))
    heads = {id(p) for p in model.heads.parameters()}
    assert len(model.shared_parameters()) + len(heads) == len(list(model.parameters()))


@pytest.mark.parametrize("name, aggregator, method", [
    ("nyuv2", "ls", "sage"), ("nyuv2", "mgda", "erm"), ("cityscapes", "fairgrad", "sage"), ("cityscapes", "famo", "erm"),
    ("nyuv2", "moco", "erm"), ("nyuv2", "mgda", "samo"), ("cityscapes", "cagrad", "fmtl"),
    ("nyuv2", "fairgrad", "sage-samo")])
def test_loader_mtan_losses_metrics_delta_m(data_root, tmp_path, name, aggregator, method):
    overrides = {"optimizer.method": "sage", "optimizer.perturbation": "samo"} if method == "sage-samo" else \
        {"optimizer.method": method}
    recipe = _recipe(name, data_root, tmp_path, **{"aggregator.name": aggregator, **overrides})
    result = train_mtl(recipe)
    last = result.history[-1].metrics
    keys = ["miou", "pixacc", "abs", "rel"] + (["mean", "median", "within_11.25", "within_22.5", "within_30"]
                                               if name == "nyuv2" else [])
    for key in keys + ["delta_m", "loss"]:
        assert np.isfinite(last[key]), key
    assert 0 <= last["miou"] <= 100 and 0 <= last["pixacc"] <= 100
    assert [c.step for c in result.history] == [0, 1]


def test_sage_run_on_nyu_fixture_through_the_cli(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["run", str(ROOT / "recipes" / "nyuv2.yaml"), "--set", f"dataset.root={data_root}",
            "--set", "backbone.name=mtan_narrow", "--set", "training.epochs=1", "--set", "training.batch_size=2",
            "--set", "aggregator.name=mgda"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "nyuv2 mgda × sage: delta_m" in result.output


def _copy(data_root, tmp_path):
    shutil.copytree(data_root / "nyuv2", tmp_path / "nyuv2")
    return tmp_path / "nyuv2"


def test_data_errors_name_the_file(data_root, tmp_path):
    base = _copy(data_root, tmp_path)
    spec = DENSE["nyuv2"]
    np.save(base / "train" / "label" / "0.npy", np.full((32, 64), 20.0, dtype=np.float32))
    with pytest.raises(UserError, match=r"label/0.npy: labels must lie in \[-1, 12\]"):
        DenseDataset(base, "train", spec).load(0)
    np.save(base / "train" / "label" / "0.npy", np.zeros((16, 64), dtype=np.float32))
    with pytest.raises(UserError, match=r"label/0.npy: shape \(16, 64\) does not match"):
        DenseDataset(base, "train", spec).load(0)
    (base / "train" / "depth" / "3.npy").unlink()
    with pytest.raises(UserError, match="image count differs between modalities"):
        DenseDataset(base, "train", spec)
    shutil.rmtree(base / "val" / "normal")
    with pytest.raises(UserError, match=f"missing modality folder {base}/val/normal"):
        DenseDataset(base, "val", spec)


def test_cli_bad_mtl_root_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(ROOT / "recipes" / "cityscapes.yaml"), "--set",
                                      f"dataset.root={tmp_path}/none"])
    assert result.exit_code == 2 and "expected" in result.output and not (tmp_path / "mlflow.db").exists()


def test_augmentation_flip_negates_normal_x_and_scale_crop_divides_depth():
    image, label = torch.rand(3, 4, 6), torch.arange(24).reshape(4, 6) % 3
    depth, normal = torch.full((1, 4, 6), 2.0), torch.zeros(3, 4, 6)
    normal[0], normal[2] = 0.6, 0.8
    _, flipped_label, _, flipped_normal = horizontal_flip(image, label, depth, normal)
    assert torch.equal(flipped_label, label.flip(-1))
    assert torch.allclose(flipped_normal[0], torch.full((4, 6), -0.6)) and torch.allclose(flipped_normal[2], normal[2])
    scales_seen = set()
    for seed in range(30):
        _, _, d, _ = random_scale_crop(image, label, depth, normal, torch.Generator().manual_seed(seed))
        scales_seen.add(round(2.0 / float(d.max()), 3))
    assert scales_seen == {1.0, 1.2, 1.5}


def test_losses_by_hand():
    log_probs = torch.log(torch.tensor([[[[0.7]], [[0.3]]], [[[0.2]], [[0.8]]]]))  # (2, 2, 1, 1)
    label = torch.tensor([[[0]], [[-1]]])
    assert float(segmentation_loss(log_probs, label)) == pytest.approx(-np.log(0.7), rel=1e-6)
    target = torch.tensor([[[[1.0, 0.0, 3.0]]]])
    assert float(depth_loss(torch.tensor([[[[2.0, 9.0, 3.5]]]]), target)) == pytest.approx((1.0 + 0.5) / 2)
    n_t = torch.zeros(1, 3, 1, 2)
    n_t[0, 2, 0, 0] = 1.0  # pixel 1 has no normal
    n_p = torch.zeros(1, 3, 1, 2)
    n_p[0, 0, 0, 0] = 1.0  # orthogonal: cosine 0
    assert float(normal_loss(n_p, n_t)) == pytest.approx(1.0)


def test_sage_x_perturbs_along_the_aggregators_direction():
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(4, 3))
    x = torch.randn(5, 3)
    targets = [torch.randn(5, 4), torch.randn(5, 4)]
    opt = SAGE([W], torch.optim.SGD, rho=0.05, gamma=0.0, lr=0.0)
    opt.aggregator = MGDA(2)
    theta = W.detach().clone()
    losses = torch.stack([((x @ W.T - t) ** 2).mean() for t in targets])
    J = torch.stack([torch.autograd.grad(loss, W, retain_graph=True)[0].flatten() for loss in losses]).double()
    direction = MGDA(2).combine(J).float().reshape(4, 3)
    opt.first_step(losses)
    torch.testing.assert_close(W.detach() - theta, 0.05 * theta.norm() * polar(direction), atol=1e-6, rtol=1e-4)


def test_toy_problem_and_aggregators_on_it():
    x = torch.tensor([-8.5, 7.5], requires_grad=True)
    f = toy_losses(x)
    assert f.shape == (2,) and torch.isfinite(f).all()
    opt = SAGE([x], torch.optim.Adam, rho=0.0, gamma=0.0, lr=0.05)
    opt.aggregator = MGDA(2)
    start = f.detach().clone()
    for _ in range(200):
        opt.step(lambda: toy_losses(x))
    assert (toy_losses(x).detach() < start).all()  # MGDA moves towards the Pareto front: both objectives drop


@pytest.mark.parametrize("overrides,stop_at_call,resumes_at", [
    ({}, 6, 1),  # mid-epoch 1 (4 batches an epoch): redo epoch 1 from epoch 0's checkpoint
    ({"optimizer.perturbation": "samo", "aggregator.name": "moco"}, 4, 1),  # at epoch 0's end: saved, then stop
    ({}, 2, 0),  # within the first epoch: from the initial state, saved at the start
])
def test_mtl_resume_after_preemption_is_bit_identical(tmp_path, overrides, stop_at_call, resumes_at):
    # SAGE-SAMO × MoCo: the SPSA directions, the noise and MoCo's tracking state all survive the checkpoint
    recipe = load_recipe(ROOT / "recipes" / "mtl_quickstart.yaml",
                         {"training.epochs": 3, "training.output_dir": str(tmp_path), "optimizer.gamma": 0.05,
                          "training.batch_size": 64, **overrides})
    data = load_mtl_data(recipe)
    from sage_cli.mtl.data import DigitPairs

    data.train, data.test = DigitPairs("train", n_pairs=256), DigitPairs("test", n_pairs=128)
    straight = train_mtl(recipe, data=data)
    ckpt = tmp_path / "ckpt.pt"
    calls = {"n": 0}

    def stop_at_a_step():  # asked once after every step but an epoch's last, and once at each epoch's end
        calls["n"] += 1
        return calls["n"] >= stop_at_call

    with pytest.raises(Preempted) as stopped:
        train_mtl(recipe, data=data, checkpoint_path=ckpt, should_stop=stop_at_a_step)
    assert stopped.value.step == resumes_at - 1
    resumed = train_mtl(recipe, data=data, checkpoint_path=ckpt)
    assert resumed.resumed_from == resumes_at
    assert len(resumed.history) == len(straight.history) == 3
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.metrics.items() if "time" not in k} == \
               {k: v for k, v in b.metrics.items() if "time" not in k}


def test_mtl_quickstart_recipe_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["run", str(ROOT / "recipes" / "mtl_quickstart.yaml"),
                                      "--set", "training.epochs=1", "--set", "training.report_epochs=1"])
    assert result.exit_code == 0, result.output
    assert "mtl_digits ls × sage: mean_acc" in result.output
