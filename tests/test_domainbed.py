"""DomainBed folder layouts: discovery, `sage datasets`, clear errors, and a short run on each."""

import pytest
import torch
from fixtures import make_all, make_tree
from typer.testing import CliRunner

from sage_cli.catalog import card, folder_cards
from sage_cli.cli import app
from sage_cli.errors import UserError
from sage_cli.recipe import load_recipe
from sage_cli.train.dg import load_dg_data, train_dg

QUICKSTART = "recipes/quickstart.yaml"
FOLDERS = [c.name for c in folder_cards()]


def _recipe(name, root, **extra):
    values = {"dataset.name": name, "dataset.root": str(root), "dataset.image_size": 32, "dataset.test_envs": [0],
              "training.steps": 3, "training.checkpoint_freq": 2, "training.batch_size": 4}
    values.update(extra)
    return load_recipe(QUICKSTART, values)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("data"))


def test_datasets_command_lists_all_five_layouts(root):
    result = CliRunner().invoke(app, ["datasets", "--root", str(root)])
    assert result.exit_code == 0, result.output
    for name in FOLDERS:
        assert name in result.output
    assert "officehome: Art 12 · Clipart 12 · Product 12 · Real World 12" in result.output  # env with a space
    assert result.output.count(" ok ") == 5
    assert not [line for line in result.output.splitlines() if "not found" in line and line.split(":")[0] in FOLDERS]
    assert f"nyuv2: not found; fetch it with: sage datasets download nyuv2 --root {root}" in result.output


def test_datasets_command_needs_a_root(monkeypatch, tmp_path):
    monkeypatch.delenv("SAGE_DATA", raising=False)
    result = CliRunner().invoke(app, ["datasets"])
    assert result.exit_code == 2 and "SAGE_DATA" in result.output
    result = CliRunner().invoke(app, ["datasets", "--root", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("name", FOLDERS)
def test_three_step_run_on_each_layout(root, name, tmp_path):
    recipe = _recipe(name, root, **{"training.output_dir": str(tmp_path)})
    data = load_dg_data(recipe)
    assert data.env_names == list(card(name).envs) and data.classes == ["dog", "giraffe", "house"]
    assert sum(len(s["in"]) + len(s["out"]) for s in data.splits) == 12 * len(card(name).envs)
    result = train_dg(recipe, data=data)
    assert [c.step for c in result.history] == [0, 2]
    assert all(-1 <= c.metrics["target_alignment"] <= 1 for c in result.history)


def test_sage_data_environment_variable(root, monkeypatch):
    monkeypatch.setenv("SAGE_DATA", str(root))
    recipe = load_recipe(QUICKSTART, {"dataset.name": "pacs", "dataset.test_envs": [0], "dataset.image_size": 32})
    assert len(load_dg_data(recipe).splits) == 4


def test_clip_normalisation_when_backbone_is_clip(root):
    recipe = _recipe("pacs", root, **{"backbone.name": "clip", "backbone.model": "ViT-Tiny-16"})
    env = load_dg_data(recipe).splits[0]["in"].env
    assert env.normalize.mean == (0.48145466, 0.4578275, 0.40821073)


def test_uniform_batch_sampling_spreads_one_batch_over_envs(root):
    recipe = _recipe("pacs", root, **{"training.batch_sampling": "uniform", "training.batch_size": 12})
    from sage_cli.train.dg import Batcher

    batcher = Batcher(load_dg_data(recipe), recipe)
    xs, ys, weights = batcher.next()
    assert sum(len(y) for y in ys) == 12 and weights.sum() == 12 and len(xs) == len(weights)


# --------------------------------------------------------------------------------------------- errors
def _broken(tmp_path, damage):
    base = make_tree(tmp_path, "pacs")
    damage(base)
    return tmp_path


@pytest.mark.parametrize("damage, message", [
    (lambda b: __import__("shutil").rmtree(b / "sketch"), "missing env folder {}/PACS/sketch"),
    (lambda b: (b / "cartoon" / "zebra").mkdir(), "class folders of {}/PACS/cartoon differ"),
    (lambda b: [p.unlink() for p in (b / "photo").rglob("*.*")], "env folder {}/PACS/photo holds no images"),
])
def test_broken_trees_fail_with_the_path(tmp_path, damage, message):
    root = _broken(tmp_path, damage)
    with pytest.raises(UserError, match=message.format(root).replace("(", r"\(")):
        load_dg_data(_recipe("pacs", root))
    result = CliRunner().invoke(app, ["datasets", "--root", str(root)])
    assert "problems" in result.output


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(UserError, match=f"expected the DomainBed folder {tmp_path}/VLCS"):
        load_dg_data(_recipe("vlcs", tmp_path))


def test_corrupt_image_fails_by_default_and_can_be_skipped(tmp_path):
    base = make_tree(tmp_path, "pacs")
    bad = base / "photo" / "dog" / "000.jpg"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["datasets", "--root", str(tmp_path), "--verify"])
    assert f"unreadable image {bad}" in result.output.replace("\n", "")
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        train_dg(_recipe("pacs", tmp_path, **{"training.output_dir": str(tmp_path / "runs")}))
    skip = _recipe("pacs", tmp_path, **{"dataset.corrupt_images": "skip", "training.output_dir": str(tmp_path / "r2"),
                                        "dataset.workers": 0})  # the warning comes from this process
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        result = train_dg(skip)
    assert len(result.history) == 2


def test_cli_run_on_bad_data_exits_2_without_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["run", str(__import__("pathlib").Path(__file__).parents[1] / QUICKSTART),
                                      "--set", "dataset.name=pacs", "--test-env", "0",
                                      "--set", f"dataset.root={tmp_path}/nothing"])
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_augmentation_is_seeded_per_item(root):
    recipe = _recipe("pacs", root)
    env = load_dg_data(recipe).splits[0]["in"].env
    a, _ = env.load(0, train=True, seed=5)
    b, _ = env.load(0, train=True, seed=5)
    c, _ = env.load(0, train=True, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", FOLDERS)
def test_shipped_recipe_runs_three_steps_through_the_cli(root, name, tmp_path, monkeypatch):
    """The paper's recipe for each dataset, with a tiny ViT instead of ViT-B/16 (no weights offline)."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = Path(__file__).parents[1] / "recipes" / f"{name}.yaml"
    paper = load_recipe(recipe)
    assert (paper.optimizer.lr, paper.optimizer.rho, paper.optimizer.gamma) == (1e-6, 1e-6, 1e-6)
    assert paper.training.batch_size == 12 and paper.training.steps == 5001 and paper.sweep.seeds == [0, 1, 2]
    assert paper.training.checkpoint_freq == (1000 if name == "domainnet" else 300)
    args = ["run", str(recipe), "--set", f"dataset.root={root}", "--set", "dataset.image_size=32",
            "--set", "backbone.model=ViT-Tiny-16", "--set", "backbone.pretrained=null",
            "--set", "training.steps=3", "--set", "training.checkpoint_freq=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "target env 0 accuracy" in result.output


def test_embedded_digits_are_load_digits_read_without_importing_scikit_learn():
    """RotatedDigits reads the file load_digits reads (its import is ~1.2 s of every digits run's start)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from sage_cli.data.digits import _bundled_digits

    pixels, target = _bundled_digits()
    digits = load_digits()
    assert pixels.dtype == digits.images.dtype and (pixels == digits.images).all() and (target == digits.target).all()
    probe = ("import sys; from sage_cli.data.digits import RotatedDigits; from sage_cli.mtl.data import DigitPairs; "
             "RotatedDigits(); DigitPairs('test', 4); print(sorted(m for m in sys.modules if m.startswith('sklearn')))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
