"""Plan: a recipe (or an experiment file of recipes × method overrides) crossed with sweep axes (ρ, γ,
seeds, test envs, the Fig. 3 components) → jobs. A job is a resolved recipe; its hash is its identity."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..catalog import DATASETS
from ..errors import UserError
from ..recipe import (
    CHOICES,
    Recipe,
    SlurmConfig,
    _chosen_class,
    _keys,
    apply_overrides,
    flatten_dict,
    load_recipe,
    read_yaml,
    validation_message,
)
from ..registry import did_you_mean

# The Fig. 3 ablation (OfficeHome): each SAGE component removed, Muon, and the full method.
COMPONENTS: dict[str, dict[str, Any]] = {
    "no_newton_schulz": {"optimizer.method": "sage", "optimizer.polar": "none"},
    "no_scaling": {"optimizer.method": "sage", "optimizer.scale_by_weight_norm": False},
    "no_noise": {"optimizer.method": "sage", "optimizer.noise": False},
    "muon": {"optimizer.method": "muon"},
    "sage": {"optimizer.method": "sage"},
}


@dataclass
class Job:
    label: str  # human-readable: what varies
    recipe: Recipe
    after: str = ""  # the hash of the job this one starts from (BOA's ``init_from``): it runs once that one finished
    hash: str = field(init=False)

    def __post_init__(self):
        self.hash = self.recipe.hash()


def resolve(base: dict, overrides: dict[str, Any], where: str) -> Recipe:
    data = apply_overrides(base, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        dotted, message = validation_message(exc, data)
        raise UserError(f"{where}: {dotted}: {message}") from None


def acts(data: dict, dotted: str) -> bool:
    """Whether the setting ``dotted`` is read by the method, objective or aggregator ``data`` picks (other
    sections' settings always count as acting)."""
    section, _, key = dotted.partition(".")
    if section not in CHOICES or not key or "." in key:
        return True
    chosen = _chosen_class(section, data)
    return chosen is None or key in _keys(chosen)


def test_env_values(recipe: Recipe, spec) -> list[list[int] | None]:
    """The held-out env sets to run: each env alone (``all`` or a list), plus every pair with ``pairs`` (what
    DomainBed's leave-one-domain-out selection needs); an entry of a list may itself be a list of envs, e.g.
    ``[5, [0, 5], [1, 5]]`` for LOO of env 5 alone."""
    if recipe.kind == "mtl":  # multi-task: no environments to hold out
        return [None]
    n = len(DATASETS.entry(recipe.dataset.name).envs)
    if spec in (None, "recipe"):
        spec = recipe.sweep.test_envs
    if spec in ("all", "pairs"):
        singles = [[t] for t in range(n)]
        return singles + ([list(p) for p in itertools.combinations(range(n), 2)] if spec == "pairs" else [])
    sets = [sorted({int(v) for v in (item if isinstance(item, (list, tuple)) else [item])}) for item in spec]
    for v in (v for envs in sets for v in envs):
        if not 0 <= v < n:
            raise UserError(f"test env {v} is out of range: {recipe.dataset.name} has envs 0..{n - 1}")
    return sets


def _start_order(variants: dict[str, dict[str, Any]], where: str) -> list[tuple[str, str]]:
    """(variant, the variant it starts from or "") in an order where every start comes before the variants that
    explore from it: a variant whose ``optimizer.init_from`` names another variant's label (BOA from SAM)."""
    starts = {v: o.get("optimizer.init_from") if o.get("optimizer.init_from") in variants else "" for v, o in
              variants.items()}
    order: list[tuple[str, str]] = []
    while len(order) < len(starts):
        placed = {v for v, _ in order}
        ready = [(v, s) for v, s in starts.items() if v not in placed and (not s or s in placed)]
        if not ready:
            raise UserError(f"{where}: optimizer.init_from: the methods {', '.join(sorted(set(starts) - placed))} "
                            "start from each other in a circle")
        order += ready
    return order


def expand(recipe: Recipe, axes: dict[str, list[Any]], variants: dict[str, dict[str, Any]] | None = None,
           seeds: list[int] | None = None, test_envs=None, source: str = "recipe", label: str = "",
           notes: list[str] | None = None, search=None) -> list[Job]:
    """Every combination of ``axes`` (dotted key → values) × ``variants`` (label → overrides) × seeds ×
    [``search`` draws ×] test envs, each a validated recipe; one job per distinct identity. An axis that the
    variant's method does not read is dropped for that variant, with a line in ``notes``, rather than planning
    duplicates. A variant whose ``optimizer.init_from`` is another variant's label explores from that variant's
    job of the same seed, test envs, draw and shared grid values: it gets ``init_from: hash:<that job's hash>`` and
    runs after it (``Job.after``); a variant with nothing to search (BOA) takes its start's draws."""
    from ..search.draws import draw, searched_keys

    base = recipe.given()
    variants = variants or {"": {}}
    seeds = seeds if seeds is not None else list(recipe.sweep.seeds)
    envs = test_env_values(recipe, test_envs)
    jobs: dict[str, Job] = {}
    made: dict[str, list[tuple[dict, int, Any, int, Job]]] = {}  # variant → (grid point, seed, envs, draw, job)
    draws_of: dict[str, list[int]] = {}
    for variant, start in _start_order(variants, source):
        overrides = variants[variant]
        picked = apply_overrides(base, overrides)
        idle = [k for k in axes if not acts(picked, k)]
        for key in idle:
            if notes is not None:
                section, _, setting = key.partition(".")
                name = _chosen_class(section, picked).model_fields[CHOICES[section].get(
                    CHOICES[section].names()[0]).tag].default
                notes.append(f"{' '.join(p for p in (label, variant) if p) or source}: {setting} does not act on "
                             f"{CHOICES[section].kind} '{name}'; its grid is left out")
        keys = [k for k in axes if k not in idle]
        plain = resolve(base, {k: v for k, v in overrides.items() if k != "optimizer.init_from"}, source)
        searched = searched_keys(plain, search.keys) if search else []
        draws_of[variant] = list(range(search.n)) if searched else draws_of.get(start, [0]) if start else [0]
        name = variant or plain.label
        for values in itertools.product(*(axes[k] for k in keys)):
            point = dict(zip(keys, values))
            for seed in seeds:
                for index in draws_of[variant]:
                    drawn = draw(plain, searched, index, seed, search.seeding, name) if searched else {}
                    for env in envs:
                        all_overrides = {**point, **overrides, **drawn, "training.seed": seed}
                        after = _start_job(made.get(start, []), point, seed, env, index,
                                           f"{source}: {variant}") if start else None
                        if after is not None:
                            all_overrides["optimizer.init_from"] = f"hash:{after.hash}"
                        if variant:  # the row label of reports
                            all_overrides["tracking.label"] = variant
                        if search:
                            all_overrides.update({"tracking.draw": index, "tracking.searched": searched})
                            all_overrides.update({f"sweep.{k}": v for k in ("prune", "asha_eta")
                                                  if (v := getattr(search, k)) is not None})
                        if env is not None:
                            all_overrides["dataset.test_envs"] = env
                        parts = [label, variant] + [f"{k.split('.')[-1]}={v}" for k, v in point.items()] + \
                                ([f"draw={index}"] if search else []) + [f"seed={seed}"] + \
                                ([f"env={','.join(map(str, env))}"] if env is not None else [])
                        job = Job(" ".join(p for p in parts if p), resolve(base, all_overrides, source),
                                  after.hash if after is not None else "")
                        job = jobs.setdefault(job.hash, job)
                        made.setdefault(variant, []).append((point, seed, env, index, job))
    return list(jobs.values())


def _start_job(candidates, point: dict, seed: int, env, index: int, where: str) -> Job:
    """The one start job of the same seed, envs and draw whose grid values agree with ``point`` on the keys both
    have."""
    found = [job for p, s, e, d, job in candidates
             if s == seed and e == env and d == index and all(p[k] == v for k, v in point.items() if k in p)]
    if len(found) != 1:
        raise UserError(f"{where}: optimizer.init_from: {len(found)} jobs to start from at seed {seed}"
                        f"{f', test envs {env}' if env is not None else ''}; a grid the start reads and this method "
                        "does not leaves it ambiguous")
    return found[0]


def sweep_id(name: str, jobs: list[Job]) -> str:
    digest = hashlib.sha256("\n".join(sorted(j.hash for j in jobs)).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)
    return f"{safe}-{digest}"


# ------------------------------------------------------------------------------------- experiment files
@dataclass
class Experiment:
    name: str
    jobs: list[Job]
    slurm: SlurmConfig | None
    tracking_experiment: str


EXPERIMENT_KEYS = {"name", "recipes", "methods", "grid", "components", "seeds", "test_envs", "overrides", "slurm",
                   "experiment", "search"}


def load_search(spec, n_hparams: int | None, where: str):
    """The experiment's ``search:`` with ``--n-hparams`` applied (None: no search)."""
    from ..search.draws import SearchConfig

    if spec is None and n_hparams is None:
        return None
    spec = {**(spec if isinstance(spec, dict) else {}), **({"n": n_hparams} if n_hparams is not None else {})}
    try:
        return SearchConfig.model_validate(spec)
    except ValidationError as exc:
        dotted, message = validation_message(exc, spec)
        raise UserError(f"{where}: search.{dotted}: {message}") from None


def load_experiment(path: str | Path, seeds=None, test_envs=None, notes: list[str] | None = None,
                    overrides: dict[str, Any] | None = None, n_hparams: int | None = None) -> Experiment:
    """An experiment file: ``recipes`` × ``methods`` (label → overrides) × ``grid`` (key → values)
    [× ``search`` draws] [× ``components``] × seeds × test envs. Recipe paths are relative to the file or the
    working dir. ``overrides`` (``sage sweep --set``) join the file's own ``overrides:``, on every recipe, before
    the methods and the grid; ``n_hparams`` (``--n-hparams``) sets the number of draws."""
    path = Path(path)
    _tree, spec = read_yaml(path, "experiment")
    if not isinstance(spec, dict) or not spec.get("recipes"):
        raise UserError(f"{path}: an experiment file needs a mapping with a 'recipes' list")
    for key in spec:
        if key not in EXPERIMENT_KEYS:
            raise UserError(f"{path}: {key}: unknown key{did_you_mean(key, EXPERIMENT_KEYS)}")
    methods = spec.get("methods") or {"": {}}
    common = spec.get("overrides") or {}
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{path}: grid: a mapping of keys to lists of values, e.g. optimizer.rho: [1e-6, 1e-5]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key}: give a non-empty list of values (an empty one plans no job)")
    for key in ("seeds", "test_envs"):
        if isinstance(spec.get(key), list) and not spec[key]:
            raise UserError(f"{path}: {key}: an empty list plans no job; leave it out for the recipe's own")
    search = load_search(spec.get("search"), n_hparams, str(path))
    jobs: list[Job] = []
    for entry in spec["recipes"]:
        candidates = [path.parent / entry, Path(entry), path.parent.parent / entry]
        recipe_path = next((c for c in candidates if c.is_file()), None)
        if recipe_path is None:
            raise UserError(f"{path}: recipe {entry} not found")
        recipe = load_recipe(recipe_path, {**flatten_dict(common), **(overrides or {})} or None)
        label = recipe.name or recipe_path.stem
        variants = {m: flatten_dict(o or {}) for m, o in methods.items()}
        run_seeds = seeds if seeds is not None else spec.get("seeds")
        run_envs = test_envs if test_envs is not None else spec.get("test_envs")
        jobs += expand(recipe, grid, variants, run_seeds, run_envs, str(path), label, notes, search)
        if spec.get("components"):  # Fig. 3's variants, at the recipe's own ρ and γ
            jobs += expand(recipe, {}, COMPONENTS, run_seeds, run_envs, str(path), label, notes)
    slurm = SlurmConfig.model_validate(spec["slurm"]) if spec.get("slurm") else None
    name = spec.get("name") or path.stem
    return Experiment(name, jobs, slurm, spec.get("experiment") or name)
