"""Every registered objective and optimizer runs 3 steps on RotatedDigits and on a tiny CLIP ViT."""

import pytest
import torch
from fixtures import make_tree

from sage_cli.objectives import OBJECTIVES
from sage_cli.optim import METHODS
from sage_cli.recipe import load_recipe
from sage_cli.train.dg import train_dg

QUICKSTART = "recipes/quickstart.yaml"
FAST = {"training.steps": 3, "training.checkpoint_freq": 2, "training.batch_size": 8, "optimizer.rho": None}
GGA_FAST = {"optimizer.gga_candidates": 2}  # a setting of gga alone


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_tree(root, "pacs", per_class=3)
    return root


def _check(result):
    last = result.history[-1]
    assert last.step == 2 and torch.isfinite(torch.tensor(last.metrics["loss"]))
    assert all(0 <= last.metrics[k] <= 1 for k in last.metrics if k.endswith("_acc"))


def _fast(values):
    return {**FAST, **(GGA_FAST if values.get("optimizer.method") == "gga" else {})}


def _digits(tmp_path, **values):
    return train_dg(load_recipe(QUICKSTART, {**_fast(values), "training.output_dir": str(tmp_path), **values}))


def _vit(pacs, tmp_path, **values):
    return train_dg(load_recipe(QUICKSTART, {
        **_fast(values), "training.output_dir": str(tmp_path), "dataset.name": "pacs", "dataset.root": str(pacs),
        "dataset.image_size": 32, "dataset.test_envs": [3], "backbone.name": "clip", "backbone.model": "ViT-Tiny-16",
        "training.batch_size": 4, **values}))


@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_objective_with_sage_on_digits(objective, tmp_path):
    _check(_digits(tmp_path, **{"objective.name": objective, "optimizer.method": "sage"}))


# every method that trains; BOA explores from a trained start instead (tests/test_boa.py runs it from one)
TRAINING = [m for m in METHODS.names() if not METHODS.get(m).task]


@pytest.mark.parametrize("method", TRAINING)
def test_optimizer_with_erm_on_digits(method, tmp_path):
    _check(_digits(tmp_path, **{"optimizer.method": method}))


@pytest.mark.parametrize("objective", OBJECTIVES.names())
def test_objective_on_tiny_vit(objective, pacs, tmp_path):
    _check(_vit(pacs, tmp_path, **{"objective.name": objective, "optimizer.method": "erm"}))


@pytest.mark.parametrize("method", TRAINING)
def test_optimizer_on_tiny_vit(method, pacs, tmp_path):
    _check(_vit(pacs, tmp_path, **{"optimizer.method": method}))


@pytest.mark.parametrize("objective, method", [("fish", "sage"), ("dann", "sam"), ("irm", "gga"), ("coral", "gam")])
def test_objectives_compose_with_optimizers(objective, method, tmp_path):
    _check(_digits(tmp_path, **{"objective.name": objective, "optimizer.method": method}))
