"""Random hyper-parameter search: DomainBed's draws reproduced, sage's own seeding, the rules that prune."""

import hashlib

import numpy as np
import pytest
import yaml

from sage_cli.catalog import DATASETS
from sage_cli.recipe import load_recipe
from sage_cli.search.draws import declared, draw, searched_keys
from sage_cli.search.prune import verdict
from sage_cli.settings.methods import METHODS
from sage_cli.settings.objectives import OBJECTIVES


# ---- DomainBed's random hparams, written out from facebookresearch/DomainBed domainbed/hparams_registry.py
# (commit 04cfc61) and domainbed/lib/misc.py (seed_hash), for the algorithms compared below; its train.py draws
# hparams_seed h of trial t as random_hparams(algorithm, dataset, seed_hash(h, t)).
def _seed_hash(*args):
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2**31)


def _domainbed_hparams(algorithm, dataset, random_seed):
    SMALL_IMAGES = ['Debug28', 'RotatedMNIST', 'ColoredMNIST']
    hparams = {}

    def _hparam(name, default_val, random_val_fn):
        assert name not in hparams
        random_state = np.random.RandomState(_seed_hash(random_seed, name))
        hparams[name] = (default_val, random_val_fn(random_state))

    _hparam('data_augmentation', True, lambda r: True)
    _hparam('resnet18', False, lambda r: False)
    _hparam('resnet_dropout', 0., lambda r: r.choice([0., 0.1, 0.5]))
    _hparam('class_balanced', False, lambda r: False)
    _hparam('nonlinear_classifier', False, lambda r: bool(r.choice([False, False])))
    if algorithm in ['DANN', 'CDANN']:
        _hparam('lambda', 1.0, lambda r: 10**r.uniform(-2, 2))
        _hparam('weight_decay_d', 0., lambda r: 10**r.uniform(-6, -2))
        _hparam('d_steps_per_g_step', 1, lambda r: int(2**r.uniform(0, 3)))
        _hparam('grad_penalty', 0., lambda r: 10**r.uniform(-2, 1))
        _hparam('beta1', 0.5, lambda r: r.choice([0., 0.5]))
        _hparam('mlp_width', 256, lambda r: int(2 ** r.uniform(6, 10)))
        _hparam('mlp_depth', 3, lambda r: int(r.choice([3, 4, 5])))
        _hparam('mlp_dropout', 0., lambda r: r.choice([0., 0.1, 0.5]))
    elif algorithm == 'Fish':
        _hparam('meta_lr', 0.5, lambda r: r.choice([0.05, 0.1, 0.5]))
    elif algorithm == "IRM":
        _hparam('irm_lambda', 1e2, lambda r: 10**r.uniform(-1, 5))
        _hparam('irm_penalty_anneal_iters', 500, lambda r: int(10**r.uniform(0, 4)))
    elif algorithm == "MMD" or algorithm == "CORAL":
        _hparam('mmd_gamma', 1., lambda r: 10**r.uniform(-1, 1))
    if dataset in SMALL_IMAGES:
        _hparam('lr', 1e-3, lambda r: 10**r.uniform(-4.5, -2.5))
    else:
        _hparam('lr', 5e-5, lambda r: 10**r.uniform(-5, -3.5))
    if dataset in SMALL_IMAGES:
        _hparam('weight_decay', 0., lambda r: 0.)
    else:
        _hparam('weight_decay', 0., lambda r: 10**r.uniform(-6, -2))
    if dataset in SMALL_IMAGES:
        _hparam('batch_size', 64, lambda r: int(2**r.uniform(3, 9)))
    elif dataset == 'DomainNet':
        _hparam('batch_size', 32, lambda r: int(2**r.uniform(3, 5)))
    else:
        _hparam('batch_size', 32, lambda r: int(2**r.uniform(3, 5.5)))
    if algorithm in ['DANN', 'CDANN'] and dataset in SMALL_IMAGES:
        _hparam('lr_g', 1e-3, lambda r: 10**r.uniform(-4.5, -2.5))
    elif algorithm in ['DANN', 'CDANN']:
        _hparam('lr_g', 5e-5, lambda r: 10**r.uniform(-5, -3.5))
    if algorithm in ['DANN', 'CDANN'] and dataset in SMALL_IMAGES:
        _hparam('weight_decay_g', 0., lambda r: 0.)
    elif algorithm in ['DANN', 'CDANN']:
        _hparam('weight_decay_g', 0., lambda r: 10**r.uniform(-6, -2))
    return {a: c for a, (b, c) in hparams.items()}


# sage's setting → DomainBed's hparam, per algorithm (DomainBed trains DANN's featurizer with lr_g, weight_decay_g)
COMMON = {"optimizer.lr": "lr", "optimizer.weight_decay": "weight_decay", "training.batch_size": "batch_size"}
ALGORITHMS = {
    "ERM": ("erm", COMMON),
    "IRM": ("irm", {**COMMON, "objective.hparams.lambda": "irm_lambda",
                    "objective.hparams.anneal_iters": "irm_penalty_anneal_iters"}),
    "CORAL": ("coral", {**COMMON, "objective.hparams.gamma": "mmd_gamma"}),
    "MMD": ("mmd", {**COMMON, "objective.hparams.gamma": "mmd_gamma"}),
    "DANN": ("dann", {"optimizer.lr": "lr_g", "optimizer.weight_decay": "weight_decay_g",
                      "training.batch_size": "batch_size", "objective.hparams.lambda": "lambda",
                      "objective.hparams.mlp_width": "mlp_width"}),
    "Fish": ("fish", {**COMMON, "objective.hparams.meta_lr": "meta_lr"}),
}
RECIPES = {"PACS": "recipes/pacs.yaml", "VLCS": "recipes/vlcs.yaml", "OfficeHome": "recipes/officehome.yaml",
           "TerraIncognita": "recipes/terraincognita.yaml", "DomainNet": "recipes/domainnet.yaml",
           "RotatedMNIST": "recipes/quickstart.yaml"}  # the digits draw as DomainBed's small-image datasets


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_domainbed_seeding_gives_domainbeds_own_draws(algorithm):
    objective, mapping = ALGORITHMS[algorithm]
    compared = 0
    for dataset, path in RECIPES.items():
        recipe = load_recipe(path, {"optimizer.method": "erm", "objective.name": objective})
        keys = searched_keys(recipe, "all")
        assert set(keys) == set(mapping), (dataset, keys)  # what sage draws is what DomainBed draws for them
        for hparams_seed in range(1, 6):
            for trial_seed in range(3):
                ours = draw(recipe, keys, hparams_seed, trial_seed, "domainbed", algorithm)
                theirs = _domainbed_hparams(algorithm, dataset, _seed_hash(hparams_seed, trial_seed))
                assert {k: ours[k] for k in mapping} == {k: theirs[v] for k, v in mapping.items()}, dataset
                compared += len(mapping)
    assert compared >= 6 * 5 * 3 * 3


def test_sage_seeding_repeats_each_draw_over_trial_seeds_and_draw_zero_is_the_recipe():
    recipe = load_recipe("recipes/quickstart.yaml")
    keys = searched_keys(recipe, "default")
    assert keys == ["optimizer.lr", "optimizer.rho", "optimizer.gamma"]  # SAGE's own settings and the lr
    assert draw(recipe, keys, 0, 0, "sage", "SAGE") == {}
    first = [draw(recipe, keys, d, 0, "sage", "SAGE") for d in range(1, 5)]
    assert first == [draw(recipe, keys, d, 7, "sage", "SAGE") for d in range(1, 5)]  # trials repeat the draws
    assert len({tuple(v.values()) for v in first}) == 4
    assert all(1e-7 <= v["optimizer.rho"] <= 1e-4 and 10**-4.5 <= v["optimizer.lr"] <= 10**-2.5 for v in first)
    other = load_recipe("recipes/quickstart.yaml", {"optimizer.method": "sam"})
    assert draw(other, searched_keys(other, "default"), 1, 0, "sage", "SAM")["optimizer.rho"] in (0.01, 0.02, 0.05, 0.1)


def test_every_training_method_and_domainbed_objective_declares_its_distributions_with_a_source():
    recipe = load_recipe("recipes/pacs.yaml")
    for name in METHODS.names():
        dists = declared(load_recipe("recipes/pacs.yaml", {"optimizer.method": name}))
        if name == "boa":
            assert dists == {}  # BOA takes no gradient step: nothing of it to search
            continue
        assert "optimizer.lr" in dists and all(d.source for d in dists.values()), name
    for name in ("irm", "vrex", "mmd", "coral", "dann", "cdann", "rsc", "fish"):
        dists = declared(load_recipe("recipes/pacs.yaml", {"objective.name": name, "optimizer.method": "erm"}))
        assert any(k.startswith("objective.hparams.") for k in dists), name
    assert declared(recipe)["training.batch_size"].args == (3, 5.5) and "rotated_digits" in DATASETS.names()
    assert {"erm", "irm"} <= set(OBJECTIVES.names())


@pytest.mark.parametrize("rule, mine, peers, rung, stops", [
    ("median", 0.4, [0.5, 0.6], 1, True),
    ("median", 0.55, [0.5, 0.6], 1, False),
    ("median", 0.1, [], 1, False),  # the first to get here: nothing to compare with
    ("median", 0.1, [0.9], 0, False),  # step 0: nothing trained yet
    ("asha", 0.5, [0.9, 0.8], 1, True),  # rung 1 of eta 3: the top 1 of 3 goes on
    ("asha", 0.95, [0.9, 0.8], 1, False),
    ("asha", 0.1, [0.9, 0.8], 2, False),  # checkpoint 2 is no rung of eta 3
    ("asha", 0.5, [0.9, 0.8, 0.7, 0.6, 0.4], 3, True),  # rung 3: top 2 of 6
    ("asha", 0.8, [0.9, 0.7, 0.6, 0.5, 0.4], 3, False),
])
def test_the_pruning_rules(rule, mine, peers, rung, stops):
    assert (verdict(rule, 3, mine, peers, rung) is not None) == stops


def _search_sweep(cwd, prune: str, parallel: int, search: str = "n: 3", methods=("ERM", "SAM")):
    """``methods`` (ERM and SAM) × ``search``'s draws (3) on one test env and trial seed (checkpoints at steps 0, 5,
    10, 15, 19)."""
    from sweep_helpers import QUICKSTART, sage

    exp = cwd / "search.yaml"
    rows = "".join(f"\n  {m}: {{optimizer.method: {m.lower()}}}" for m in methods)
    exp.write_text(f"name: search\nrecipes: [{QUICKSTART}]\noverrides: {{training.steps: 20, "
                   f"training.checkpoint_freq: 5}}\nmethods:{rows}\nsearch: {{{search}, prune: {prune}}}\n"
                   "seeds: [0]\ntest_envs: [5]\n")
    proc = sage(["sweep", str(exp), "--max-parallel", str(parallel)], cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return exp


def _steps_run(cwd) -> int:
    from sweep_helpers import child_runs

    client, runs = child_runs(f"sqlite:///{cwd / 'mlflow.db'}")
    return sum(1 + max(m.step for m in client.get_metric_history(r.info.run_id, "env5_in_acc")) for r in runs)


def test_a_search_sweep_reports_the_chosen_draw_and_pruning_saves_steps(tmp_path):
    """Pruned by the median rule, one job at a time (each draw judged against those before it); without pruning
    the same six jobs train 6 × 20 steps (every draw to the end, as DomainBed)."""
    import json

    from sweep_helpers import sage

    exp = _search_sweep(tmp_path, "median", 1)
    steps = _steps_run(tmp_path)
    assert steps < 6 * 20  # measured: fewer steps than the unpruned sweep's
    assert sage(["report", "search", "--out", str(tmp_path / "report")], tmp_path).returncode == 0
    for fmt in ("txt", "md", "tex", "csv", "html"):  # every format names the chosen draw of each cell
        out = (tmp_path / "report" / f"report.{fmt}").read_text()
        out = out.replace(" $\\cdot$ ", " · ").replace(" $\\rightarrow$ ", " → ")  # LaTeX's spelling
        assert "ERM · env 5 · trial 0 → draw" in out and "SAM · env 5 · trial 0 → draw" in out, fmt
        if fmt != "csv":  # CSV holds the tables' rows only; the others say what was pruned
            text = " ".join(out.split())
            assert "3 draw(s) per cell" in text and "0 of 6 runs never finished;" in text, fmt
            assert f" pruned, saving {6 * 20 - steps} steps" in text, fmt
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    [cell] = [r for r in report["dg"] if r["method"] == "SAM" and r["test_env"] == 5]
    assert cell["chosen"][0]["draw"] in (0, 1, 2) and cell["mean"] is not None  # complete
    [summary] = report["search"]
    assert summary["pruned"] >= 1 and summary["steps_saved"] == 6 * 20 - steps and summary["never_finished"] == 0
    again = sage(["sweep", str(exp)], tmp_path)
    assert "6 jobs (0 to run, 6 already finished)" in again.stdout  # a pruned draw is not run again
    status = sage(["status", "search"], tmp_path, env={"COLUMNS": "200"}).stdout
    assert "finished (pruned at step" in status


def test_asha_stops_draws_only_at_its_rungs_and_the_report_chooses_among_them(tmp_path):
    """ERM × 4 draws, η = 2, one job at a time: checkpoints 1, 2, 3 at steps 5, 10, 15; the rungs are 1 and 2
    (1, η), so a draw may stop at step 5 or 10 and never at 15 (checkpoint 3 is no rung); the last is not judged."""
    import json

    from sweep_helpers import child_runs, sage

    _search_sweep(tmp_path, "asha", 1, search="n: 4, asha_eta: 2", methods=("ERM",))
    client, runs = child_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    last = {r.data.tags["sage.draw"]: max(m.step for m in client.get_metric_history(r.info.run_id, "env5_in_acc"))
            for r in runs}
    pruned = {r.data.tags["sage.draw"]: int(r.data.tags["sage.pruned_at_step"]) for r in runs
              if r.data.tags.get("sage.pruned") == "true"}
    assert pruned and set(pruned.values()) <= {5, 10}, pruned  # measured: draws stop, at rungs only
    assert all(last[d] == (pruned[d] if d in pruned else 19) for d in last), (last, pruned)
    assert "0" not in pruned  # the first draw had no peer to be compared with
    report = json.loads(sage(["report", "search", "--format", "json"], tmp_path).stdout)
    [cell] = [r for r in report["dg"] if r["method"] == "ERM" and r["test_env"] == 5]
    assert str(cell["chosen"][0]["draw"]) not in pruned and cell["mean"] is not None  # a pruned draw is never chosen
    [summary] = report["search"]
    assert summary["pruned"] == len(pruned) and summary["steps_saved"] == sum(19 - s for s in pruned.values())


def test_the_shipped_digits_search_plans_48_jobs_of_4_draws_each():
    from sage_cli.launch.plan import load_experiment

    jobs = load_experiment("experiments/search_digits.yaml").jobs
    assert len(jobs) == 3 * 4 * 2 * 2
    cells = {(j.recipe.label, j.recipe.training.seed, tuple(j.recipe.dataset.test_envs)) for j in jobs}
    assert len(cells) == 12 and all(sorted(j.recipe.tracking.draw for j in jobs if (
        j.recipe.label, j.recipe.training.seed, tuple(j.recipe.dataset.test_envs)) == c) == [0, 1, 2, 3] for c in cells)
    sage0 = {j.recipe.optimizer.rho for j in jobs if j.recipe.label == "SAGE"}
    assert len(sage0) == 4  # 4 draws of ρ, the same for both trial seeds and both test envs
    more = load_experiment("experiments/search_digits.yaml", n_hparams=6).jobs
    assert len(more) == 3 * 6 * 2 * 2


def test_boa_from_a_searched_sam_row_explores_from_each_sam_draw(tmp_path):
    from sage_cli.launch.plan import load_experiment

    exp = tmp_path / "e.yaml"
    exp.write_text("recipes: [recipes/quickstart.yaml]\nmethods:\n  SAM: {optimizer.method: sam}\n  BOA: "
                   "{optimizer.method: boa, optimizer.init_from: SAM}\nsearch: {n: 2}\nseeds: [0]\ntest_envs: [5]\n")
    jobs = {j.label.split(" ", 1)[1]: j for j in load_experiment(exp).jobs}
    for d in (0, 1):
        boa, sam = jobs[f"BOA draw={d} seed=0 env=5"], jobs[f"SAM draw={d} seed=0 env=5"]
        assert boa.after == sam.hash and boa.recipe.optimizer.init_from == f"hash:{sam.hash}"
    # the two BOA draws are two settings for model selection, though BOA itself has nothing drawn
    assert jobs["BOA draw=0 seed=0 env=5"].recipe.hparams_hash() != jobs["BOA draw=1 seed=0 env=5"].recipe.hparams_hash()


def test_pruning_is_the_files_or_else_each_recipes(tmp_path):
    from sage_cli.launch.plan import load_experiment

    jobs = load_experiment("experiments/search_digits.yaml", overrides={"sweep.prune": "asha"}).jobs
    assert {j.recipe.sweep.prune for j in jobs} == {"none"}  # the file says none: it stands
    # where search: leaves it unset, --set sweep.prune turns it on; identities do not change with it
    plain = load_experiment("experiments/search_digits.yaml").jobs
    spec = yaml.safe_load(open("experiments/search_digits.yaml"))
    spec["search"].pop("prune")
    spec["recipes"] = ["recipes/quickstart.yaml"]
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(spec))
    pruned = load_experiment(path, overrides={"sweep.prune": "median"}).jobs
    assert {j.recipe.sweep.prune for j in pruned} == {"median"}
    assert sorted(j.hash for j in pruned) == sorted(j.hash for j in plain)


@pytest.mark.parametrize("search, message", [
    ("{n: 0}", "search.n: "),
    ("{n: 2, seeding: domainbd}", "search.seeding: "),
    ("{n: 2, keys: [optimizer.momentum]}", "search.keys: optimizer.momentum has no distribution for erm on rotated_digits"),
    ("{keys: all}", "search.n: "),
])
def test_a_wrong_search_is_one_line_before_anything_runs(tmp_path, search, message):
    from sage_cli.errors import UserError
    from sage_cli.launch.plan import load_experiment

    exp = tmp_path / "e.yaml"
    exp.write_text(f"recipes: [recipes/quickstart.yaml]\nmethods:\n  ERM: {{optimizer.method: erm}}\nsearch: {search}\n")
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        load_experiment(exp)
