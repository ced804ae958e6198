"""Recipes: YAML → validated ``Recipe`` (pydantic) → canonical hash (the run's identity).

Errors name the file, the line and the dotted key, with a "did you mean" for misspelt keys and names.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .catalog import AGGREGATORS, DATASET_ENVS, DATASETS, METHODS, MODELS, MTL_DATASETS, OBJECTIVES
from .errors import UserError
from .registry import did_you_mean


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-6 as a float (YAML 1.1 wants 1.0e-6, which nobody writes)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A ``--set`` value, read as YAML would read it (numbers, booleans, lists)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


# ------------------------------------------------------------------------------------------- schema
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    name: str = "rotated_digits"
    root: str | None = None
    test_envs: list[int] = Field(default_factory=lambda: [0], min_length=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    image_size: int = Field(224, gt=0)  # image datasets on disk
    corrupt_images: Literal["fail", "skip"] = "fail"

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return DATASETS.check(v)

    @model_validator(mode="after")
    def _envs_in_range(self):
        if self.name in MTL_DATASETS:  # tasks, not environments
            return self
        n = len(DATASET_ENVS[self.name])
        for env in self.test_envs:
            if not 0 <= env < n:
                raise ValueError(f"test env {env} is out of range: {self.name} has envs 0..{n - 1}")
        if len(set(self.test_envs)) >= n:
            raise ValueError(f"every env of {self.name} is a test env: nothing is left to train on")
        return self


class BackboneConfig(_Section):
    name: str = "small_cnn"
    pretrained: str | None = None  # open_clip tag or a local weights file; null = random init
    model: str | None = None  # open_clip architecture (clip): ViT-B-16 by default
    head: Literal["linear", "zeroshot"] = "linear"
    prompt: str = "a photo of a {c}."
    freeze_bn: bool = False  # resnet50: BatchNorm statistics frozen, as in DomainBed

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return MODELS.check(v)


class ObjectiveConfig(_Section):
    name: str = "erm"
    hparams: dict[str, float | int | bool | str] = Field(default_factory=dict)  # e.g. {lambda: 1.0}

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return OBJECTIVES.check(v)


# Each method's radius when the recipe gives none: SAGE at the paper's DG value, SAM/ASAM at their papers'.
DEFAULT_RHO = {"sage": 1e-6, "sam": 0.05, "asam": 0.5, "gsam": 0.05, "sagm": 0.05, "disam": 0.05, "gam": 0.02,
               "erm": 0.0, "muon": 0.0, "sgld": 0.0, "gga": 0.0,
               "samo": 1e-3, "fmtl": 2.0}  # SAMO's and F-MTL's reference settings (NYU-v2)
DEFAULT_ALPHA = {"gsam": 0.01, "sagm": 0.001}


class OptimizerConfig(_Section):
    method: str = "sage"
    base: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0)
    rho: float | None = Field(None, ge=0)
    gamma: float = Field(1e-6, ge=0)
    polar: Literal["quintic", "cubic", "svd", "polar_express", "none"] = "quintic"
    ns_steps: int = Field(5, ge=1)
    scale_by_weight_norm: bool = True
    bias_rule: Literal["sam", "scaled", "none"] = "sam"
    noise: bool = True
    eta: float = Field(0.01, ge=0)  # ASAM
    alpha: float | None = Field(None, ge=0)  # GSAM (0.01) / SAGM (0.001)
    variance_weight: float = Field(0.1, ge=0)  # DISAM's λ
    sigma: float = Field(1e-3, ge=0)  # SGLD's constant noise
    gam_norm_rho: float = Field(0.2, ge=0)  # GAM
    gam_gamma: float = Field(0.03, ge=0)
    gga_start: int = Field(0, ge=0)  # GGA's annealing window [start, end]
    gga_end: int = Field(100, ge=0)
    gga_candidates: int = Field(10, ge=0)
    gga_neighborhood: float = Field(1e-4, ge=0)
    gga_tolerance: float = Field(0.1, ge=0)
    # MTL, per-task perturbations. ``perturbation: samo`` with ``method: sage`` is SAGE-SAMO.
    perturbation: Literal["global", "samo"] = "global"
    samo_beta: float = Field(0.5, ge=0, le=1)  # weight of the local (per-task) information
    samo_zo_eps: float = Field(0.01, gt=0)  # SPSA step μ
    samo_layerwise: bool = True  # per layer, the local estimate rescaled to the global gradient's norm
    samo_max_norm: float = Field(1.0, ge=0)  # the shared update's norm clip (0: none)
    fmtl_adaptive: bool = True  # F-MTL: ε = ρ T²g/‖Tg‖ with T = |θ| (the reference's default)
    fmtl_decompose: bool = True  # F-MTL: X(g) + X(g_perturbed − g) rather than X(g_perturbed)

    @field_validator("method")
    @classmethod
    def _known(cls, v):
        return METHODS.check(v)

    @model_validator(mode="after")
    def _resolve_defaults(self):
        if self.rho is None:
            self.rho = DEFAULT_RHO.get(self.method, 0.0)
        if self.alpha is None:
            self.alpha = DEFAULT_ALPHA.get(self.method, 0.0)
        if self.perturbation == "samo" and self.method != "sage":
            raise ValueError(f"perturbation 'samo' composes with method 'sage' (SAGE-SAMO); "
                             f"for SAMO alone use method 'samo', not '{self.method}'")
        return self

    @property
    def label(self) -> str:
        """The method's name in tables and run tags: ``sage-samo`` for SAGE with SAMO's perturbations."""
        return "sage-samo" if self.perturbation == "samo" else self.method


class TrainingConfig(_Section):
    steps: int = Field(5001, gt=0)
    batch_size: int = Field(32, gt=0)
    checkpoint_freq: int = Field(300, gt=0)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # per_env: batch_size from every training env each step (DomainBed); uniform: batch_size in all, each
    # image's env drawn uniformly (the paper's "batch 12 sampled uniformly across source domains")
    batch_sampling: Literal["per_env", "uniform"] = "per_env"
    output_dir: str = "runs"  # checkpoints for resume: <output_dir>/<recipe hash>/
    epochs: int = Field(200, gt=0)  # MTL: epochs, and the StepLR schedule
    lr_step_epochs: int = Field(100, gt=0)
    lr_gamma: float = Field(0.5, gt=0)
    report_epochs: int = Field(10, gt=0)  # MTL results are the mean over the last N epochs (the references': 10)


class AggregatorConfig(_Section):
    """MTL: how per-task losses and gradients combine (Table 2's solvers); SAGE composes with any of them."""

    name: str = "ls"
    stl_task: int = Field(0, ge=0)
    dwa_temperature: float = Field(2.0, gt=0)
    famo_w_lr: float = Field(0.025, gt=0)
    famo_gamma: float = Field(1e-3, ge=0)
    cagrad_c: float = Field(0.4, ge=0)
    fairgrad_alpha: float = Field(2.0, gt=0)
    nash_max_norm: float = Field(1.0, ge=0)
    moco_beta: float = Field(0.5, gt=0)  # MoCo (LibMTL defaults): step of the gradient tracking y
    moco_beta_sigma: float = Field(0.5, ge=0)  # its decay β/t^σ
    moco_gamma: float = Field(0.1, gt=0)  # step of the weights λ
    moco_gamma_sigma: float = Field(0.5, ge=0)
    moco_rho: float = Field(0.0, ge=0)  # ℓ2 regularisation of λ's update

    @field_validator("name")
    @classmethod
    def _known(cls, v):
        return AGGREGATORS.check(v)


class SweepConfig(_Section):
    """The protocol a sweep expands this recipe into (``sage ablate`` / ``sage sweep``); ``sage run`` runs
    one point of it (the recipe's own seed and test envs). Not part of a run's identity."""

    seeds: list[int] = Field(default_factory=lambda: [0])
    test_envs: Literal["all"] | list[int] = "all"  # leave-one-domain-out over every env


class SlurmConfig(_Section):
    """How `--launcher slurm` submits (through submitit); also accepted in experiment files."""

    partition: str | None = None
    timeout_min: int = Field(60, gt=0)
    mem_gb: float = Field(8, gt=0)  # always requested: with CR_Core_Memory a job without --mem takes the node
    cpus_per_task: int = Field(2, gt=0)
    gpus_per_node: int = Field(0, ge=0)
    array_parallelism: int = Field(64, gt=0)
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load, …)
    additional_parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)


class TrackingConfig(_Section):
    uri: str | None = None
    experiment: str = "sage"


class Recipe(_Section):
    name: str | None = None
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    # ------------------------------------------------------------------ identity and views
    def identity(self) -> dict:
        """What defines the experiment: everything but its name and where it runs, logs and saves."""
        return self.model_dump(mode="json", exclude={"tracking": True, "name": True, "sweep": True, "slurm": True,
                                                     "training": {"device", "output_dir"}})

    def hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        return flatten_dict(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out


# ------------------------------------------------------------------------------------------ loading
def _key_lines(node, path=(), lines=None, source="") -> dict[tuple, int]:
    """Line (1-based) of every key path in a composed YAML tree; duplicate keys are errors."""
    lines = {} if lines is None else lines
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{source}:{line}: {'.'.join((*path, key))}: key given twice")
            seen.add(key)
            lines[(*path, key)] = line
            _key_lines(value_node, (*path, key), lines, source)
    return lines


def _model_at(path: tuple) -> type[BaseModel] | None:
    model: Any = Recipe
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(err: dict) -> str:
    loc = tuple(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
        return f"unknown key{hint}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] not in ("value_error", "assertion_error") and "input" in err and not isinstance(
        err["input"], (dict, list)
    ):
        msg = f"{msg} (got {err['input']!r})"
    return msg


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"--set {dotted}: '{part}' is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise UserError(f"--set '{item}': expected KEY=VALUE, e.g. --set optimizer.rho=1e-5")
        overrides[key.strip()] = parse_value(value)
    return overrides


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate a recipe; any problem is a one-line ``UserError``."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise UserError(f"{source}: recipe file not found")
    text = path.read_text()
    try:
        tree = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{where}: malformed YAML: {problem}") from None
    if data is None:
        raise UserError(f"{source}: the recipe is empty; see recipes/quickstart.yaml for the format")
    if not isinstance(data, dict):
        raise UserError(f"{source}:1: a recipe must be a mapping of sections (dataset, optimizer, ...), "
                        f"not a {type(data).__name__}")
    lines = _key_lines(tree, source=source)
    overrides = overrides or {}
    for dotted, value in overrides.items():
        _set_path(data, dotted, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc)
        if any(dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".") for k in overrides):
            where = f"--set {dotted}"
        else:
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            where = f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"
        raise UserError(f"{where}: {_describe(err)}") from None
    except UserError as exc:  # a registry lookup outside pydantic's wrapping
        raise UserError(f"{source}: {exc}") from None

