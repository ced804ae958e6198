"""The run identity: only what acts on a run, and only where it differs from its default."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from sage_cli.catalog import AGGREGATORS, METHODS, OBJECTIVES
from sage_cli.errors import UserError
from sage_cli.launch.plan import expand
from sage_cli.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
MTL = ROOT / "recipes" / "mtl_quickstart.yaml"

# The identity of every shipped recipe. A change here orphans users' checkpoints and finished runs: it must
# come from a change of what acts on the run, never from adding a setting or renaming one (quickstart: #14 moved
# small_cnn to GroupNorm, its revision 1, and its ρ to 3e-3).
PINNED = {
    "cityscapes": "3be490ebc42c3c9b", "domainnet": "68c434cd79d2ed22", "mtl_quickstart": "13389308716f136c",
    "nyuv2": "0d04bf7fc629fee5", "officehome": "2a545062d0a231b6", "pacs": "9ae5587522ba0180",
    "quickstart": "64b4612bf6e1e54a", "terraincognita": "11f0cb2d20072c8d", "vlcs": "1bcb6219087f3d6b",
}


def hashes():
    return {p.stem: load_recipe(p).hash() for p in RECIPES}


def test_shipped_recipes_keep_their_identity():
    assert hashes() == PINNED


def _with_new_setting(registry, name):
    """A subclass of ``name``'s settings with one more field, whose default keeps today's behaviour."""
    original = registry.get(name)
    extended = type(original.__name__, (original,), {"__annotations__": {"new_knob": int}, "new_knob": Field(0)})
    return original, extended


@pytest.mark.parametrize("registry", [METHODS, AGGREGATORS, OBJECTIVES], ids=["method", "aggregator", "objective"])
def test_a_new_setting_with_a_default_changes_no_identity(registry):
    before = hashes()
    originals = {}
    try:
        for name in registry.names():
            original, extended = _with_new_setting(registry, name)
            originals[name] = original
            registry.unregister(name)
            registry.register(extended, name=name)
        assert load_recipe(QUICKSTART).optimizer.__class__.__name__ == METHODS.get("sage").__name__
        assert hashes() == before
        # and the new setting, once set to something else, is a real change
        section = {"optimizer method": "optimizer", "aggregator": "aggregator", "objective": "objective"}[registry.kind]
        recipe = MTL if section == "aggregator" else QUICKSTART
        assert load_recipe(recipe, {f"{section}.new_knob": 3}).hash() != load_recipe(recipe).hash()
    finally:
        for name, original in originals.items():
            registry.unregister(name)
            registry.register(original, name=name)
    assert hashes() == before


def test_a_real_change_changes_the_identity():
    sam = load_recipe(QUICKSTART, {"optimizer.method": "sam"})
    assert load_recipe(QUICKSTART, {"optimizer.method": "sam", "optimizer.rho": 0.02}).hash() != sam.hash()
    assert load_recipe(QUICKSTART, {"training.seed": 1}).hash() != load_recipe(QUICKSTART).hash()
    assert load_recipe(MTL, {"aggregator.name": "mgda"}).hash() != load_recipe(MTL).hash()


def test_what_does_not_act_is_not_part_of_the_identity(tmp_path):
    sam = load_recipe(QUICKSTART, {"optimizer.method": "sam"})
    # the SAGE settings of the file (γ, polar, ns_steps) are dropped when the method becomes SAM
    assert not hasattr(sam.optimizer, "gamma")
    plain = tmp_path / "sam.yaml"
    plain.write_text("dataset: {test_envs: [5]}\noptimizer: {method: sam, rho: 3e-3}\n"
                     "training: {steps: 400, checkpoint_freq: 100}\n")
    assert load_recipe(plain).hash() == sam.hash()
    # a default written out is no change
    assert load_recipe(QUICKSTART, {"optimizer.polar": "quintic", "backbone.freeze_bn": False}).hash() == \
        load_recipe(QUICKSTART).hash()
    # where a run is logged, saved or runs is not part of it
    assert load_recipe(QUICKSTART, {"training.device": "cpu", "training.output_dir": "elsewhere",
                                    "tracking.experiment": "x", "sweep.seeds": [0, 1]}).hash() == \
        load_recipe(QUICKSTART).hash()
    # MTL: test envs and DG step counts do not act; DG: epochs do not
    assert load_recipe(MTL, {"dataset.test_envs": [1], "training.steps": 9}).hash() == load_recipe(MTL).hash()
    assert load_recipe(QUICKSTART, {"training.epochs": 3}).hash() == load_recipe(QUICKSTART).hash()
    # momentum acts only with SGD
    assert load_recipe(QUICKSTART, {"optimizer.base": "sgd", "optimizer.momentum": 0.5}).hash() != \
        load_recipe(QUICKSTART, {"optimizer.base": "sgd"}).hash()


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer.method": "sam", "optimizer.gamma": 5}, "--set optimizer.gamma: not a setting of optimizer method 'sam'"),
    ({"optimizer.method": "sam", "optimizer.polar": "cubic"}, "--set optimizer.polar: not a setting of optimizer method"),
    ({"optimizer.method": "sam", "optimizer.ns_steps": 7}, "--set optimizer.ns_steps: not a setting of optimizer method"),
    ({"optimizer.momentum": 0.5}, "--set optimizer.momentum: momentum acts only with base 'sgd'"),
    ({"optimizer.samo_beta": 0.2}, "--set optimizer.samo_beta: samo_beta acts only with perturbation 'samo'"),
    ({"objective.name": "irm", "objective.hparams.lamda": 3}, "objective.hparams.lamda: unknown key (did you mean 'lambda'?)"),
    ({"objective.hparams.lambda": 3}, "objective.hparams.lambda: unknown key"),  # ERM has no λ
    ({"aggregator.name": "mgda"}, "--set aggregator.name: aggregator 'mgda' does not act on rotated_digits"),
    ({"backbone.name": "mtan"}, "--set backbone.name: backbone 'mtan' cannot read rotated_digits"),
    ({"backbone.freeze_bn": True}, "--set backbone.freeze_bn: not a setting of backbone 'small_cnn'"),
])
def test_settings_that_cannot_act_are_refused(overrides, message):
    with pytest.raises(UserError) as exc:
        load_recipe(QUICKSTART, overrides)
    assert message in str(exc.value)


@pytest.mark.parametrize("overrides, message", [
    ({"backbone.name": "small_cnn"}, "backbone 'small_cnn' cannot read mtl_digits (a multi-task dataset)"),
    ({"objective.name": "irm"}, "objective 'irm' does not act on mtl_digits"),
    ({"aggregator.famo_gamma": 0.1}, "aggregator.famo_gamma: not a setting of aggregator 'ls' (it belongs to 'famo')"),
])
def test_mtl_parts_that_do_not_fit_are_refused(overrides, message):
    with pytest.raises(UserError) as exc:
        load_recipe(MTL, overrides)
    assert message in str(exc.value)


def test_a_recipe_file_names_the_line_of_a_misfit(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("dataset:\n  name: mtl_digits\nbackbone:\n  name: small_cnn\n")
    with pytest.raises(UserError) as exc:
        load_recipe(path)
    assert str(exc.value).startswith(f"{path}:4: backbone.name: backbone 'small_cnn' cannot read mtl_digits")


@pytest.mark.parametrize("recipe, args", [
    (QUICKSTART, ["--set", "backbone.name=mtan"]),
    (MTL, ["--set", "backbone.name=small_cnn"]),
    (QUICKSTART, ["--set", "optimizer.method=sam", "--set", "optimizer.gamma=5"]),
    (QUICKSTART, ["--set", "aggregator.name=mgda"]),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_misfits_exit_2_with_one_line_and_leave_no_run(tmp_path, recipe, args, command):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "sage_cli", command, str(recipe), *args], cwd=tmp_path,
                          capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --set ") and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no runs/


def test_a_grid_axis_that_does_not_act_is_one_job_and_a_note():
    sam = load_recipe(QUICKSTART, {"optimizer.method": "sam"})
    notes = []
    jobs = expand(sam, {"optimizer.rho": [1e-3, 1e-2], "optimizer.gamma": [1e-4, 1e-3]}, seeds=[0], test_envs=[5],
                  notes=notes)
    assert len(jobs) == 2 and {j.recipe.optimizer.method for j in jobs} == {"sam"}
    assert notes == ["recipe: gamma does not act on optimizer method 'sam'; its grid is left out"]
    # the same resolved recipe twice (an axis at the recipe's own value) is one job
    assert len(expand(sam, {"optimizer.rho": [0.01, 0.01]}, seeds=[0], test_envs=[5])) == 1


def test_ablate_keeps_the_users_method_and_says_what_does_not_act(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sage_cli", "ablate", str(QUICKSTART), "--rho", "1e-3",
                           "--gamma", "1e-4,1e-3", "--set", "optimizer.method=sam", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "gamma does not act on optimizer method 'sam'" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "1 jobs (1 to run, 0 already finished)"
    assert list(tmp_path.iterdir()) == []


def test_objective_hparams_are_typed(tmp_path):
    irm = load_recipe(QUICKSTART, {"objective.name": "irm", "objective.hparams.lambda": 3})
    assert irm.objective.hparams.lambda_ == 3.0 and irm.objective.hparams.anneal_iters == 500
    with pytest.raises(UserError, match="anneal_iters: Input should be a valid integer"):
        load_recipe(QUICKSTART, {"objective.name": "irm", "objective.hparams.anneal_iters": "soon"})
    # a switch of objective drops the old one's hyper-parameters given in the file
    path = tmp_path / "r.yaml"
    path.write_text("objective: {name: irm, hparams: {lambda: 3}}\n")
    assert load_recipe(path, {"objective.name": "vrex"}).objective.hparams.lambda_ == 10.0


def test_literal_choice_tags_match_their_registry_names():
    for registry in (METHODS, AGGREGATORS, OBJECTIVES):
        for name in registry.names():
            settings = registry.get(name)
            assert settings.model_fields[settings.tag].default == name
            assert settings().choice == name


def test_none_means_the_methods_default():
    assert load_recipe(QUICKSTART, {"optimizer.method": "sam", "optimizer.rho": None}).optimizer.rho == 0.05
    assert load_recipe(QUICKSTART, {"optimizer.method": "asam", "optimizer.rho": None}).optimizer.rho == 0.5


def test_literal_is_how_a_method_names_itself():
    # the registry reads a settings class's name from its Literal tag: no name is written twice
    class Probe(METHODS.get("erm")):
        method: Literal["probe"] = "probe"

    try:
        METHODS.register(Probe)
        assert "probe" in METHODS.names() and load_recipe(QUICKSTART, {"optimizer.method": "probe"}).optimizer.label == "probe"
    finally:
        METHODS.unregister("probe")
    assert "probe" not in METHODS.names()


def test_implementations_default_to_their_settings_defaults():
    """The optimizer classes keep keyword defaults (they are usable alone, like torch's); they must be the
    settings classes' own, so a recipe and a direct call mean the same thing."""
    import inspect

    from sage_cli.registry import resolve

    variants = [METHODS.get(n)() for n in METHODS.names() if n != "muon"]  # muon: torch.optim.Muon's own
    variants.append(METHODS.get("sage")(perturbation="samo"))  # SAGE-SAMO's implementation
    for settings in variants:
        signature = inspect.signature(resolve(settings.implementation).__init__).parameters
        own = settings.own_settings()
        assert set(own) <= set(signature), settings.method
        for key, value in own.items():
            assert signature[key].default == value, (settings.implementation, key)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_a_resolved_recipe_loads_back_as_itself(path, tmp_path):
    """A sweep writes each job's resolved recipe (every field) and the job loads it: same recipe, same identity."""
    import json

    recipe = load_recipe(path, {"objective.hparams.lambda": 3, "objective.name": "irm"} if "quickstart" == path.stem
                         else None)
    for dumped in (recipe.model_dump(mode="json"), recipe.model_dump(mode="json", by_alias=True)):
        job = tmp_path / "job.json"
        job.write_text(json.dumps(dumped))
        again = load_recipe(job)
        assert again.hash() == recipe.hash() and again.label == recipe.label
