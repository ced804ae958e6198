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
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .catalog import AGGREGATORS, DATASETS, METHODS, MODELS, OBJECTIVES
from .errors import UserError
from .protocols import DEFAULT as DEFAULT_PROTOCOL
from .protocols import apply_preset
from .registry import Registry, did_you_mean
from .sections import (  # the plain sections, re-exported: the recipe's own schema
    DATASET_NOT_IDENTITY,
    DG_ONLY_DATASET,
    TRAINING_NOT_IDENTITY,
    TRAINING_ONLY,
    BackboneConfig,
    DatasetConfig,
    DiagnosticsConfig,
    SlurmConfig,
    SweepConfig,
    TrackingConfig,
    TrainingConfig,
)
from .settings import Choice, Section, non_defaults
from .settings.aggregators import Aggregator
from .settings.methods import Method
from .settings.objectives import Objective


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


class Recipe(Section):
    name: str | None = None
    protocol: Literal["domainbed", "disam"] = "domainbed"  # a preset of the DG settings that are not the method
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    objective: SerializeAsAny[Objective] = Field(default_factory=lambda: OBJECTIVES.get("erm")())
    aggregator: SerializeAsAny[Aggregator] | None = None  # MTL only; LS when not given
    optimizer: SerializeAsAny[Method] = Field(default_factory=lambda: METHODS.get("sage")())
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    # --------------------------------------------------------- the parts fit together, before any run exists
    @field_validator("backbone", mode="wrap")
    @classmethod
    def _backbone_fits(cls, value, handler, info: ValidationInfo):
        backbone = handler(value)
        dataset = info.data.get("dataset")
        if dataset is not None and backbone.name not in DATASETS.entry(dataset.name).backbones:
            fits = ", ".join(DATASETS.entry(dataset.name).backbones)
            _misfit("name", backbone.name, f"backbone '{backbone.name}' cannot read {dataset.name} "
                                          f"({KIND_NAMES[dataset.kind]}); use {fits}")
        reads = MODELS.entry(backbone.name).settings
        for key in non_defaults(backbone):
            if key != "name" and key not in reads:
                _misfit(key, getattr(backbone, key), f"not a setting of backbone '{backbone.name}'"
                                                     + (f" (it reads {', '.join(reads)})" if reads else ""))
        return backbone

    @field_validator("objective", mode="wrap")
    @classmethod
    def _pick_objective(cls, value, handler, info: ValidationInfo):
        return _choose(OBJECTIVES, "erm", value, handler, info)

    @field_validator("aggregator", mode="wrap")
    @classmethod
    def _pick_aggregator(cls, value, handler, info: ValidationInfo):
        dataset = info.data.get("dataset")
        if value is None:
            return AGGREGATORS.get("ls")() if dataset is not None and dataset.kind == "mtl" else None
        return _choose(AGGREGATORS, "ls", value, handler, info)

    @field_validator("optimizer", mode="wrap")
    @classmethod
    def _pick_method(cls, value, handler, info: ValidationInfo):
        return _choose(METHODS, "sage", value, handler, info)

    @model_validator(mode="after")
    def _protocol(self):
        if self.protocol != DEFAULT_PROTOCOL:
            if self.kind == "mtl":
                _misfit("protocol", self.protocol, f"protocol '{self.protocol}' is a DG protocol; "
                                                   f"{self.dataset.name} is {KIND_NAMES['mtl']}")
            apply_preset(self)
        return self

    # ------------------------------------------------------------------ identity and views
    @property
    def kind(self) -> str:
        """``dg`` (domain generalization) or ``mtl`` (multi-task learning), from the dataset."""
        return self.dataset.kind

    def identity(self) -> dict:
        """What acts on the run, and differs from its default (see the README's "Run identity")."""
        kind = self.kind
        dataset_skip = (*DATASET_NOT_IDENTITY, *(DG_ONLY_DATASET if kind == "mtl" else ()))
        other = self._training_idle()
        ident = {
            "dataset": {"name": self.dataset.name, **non_defaults(self.dataset, exclude=("name", *dataset_skip))},
            "backbone": self.backbone.identity(),
            "optimizer": self.optimizer.identity(),
            "training": non_defaults(self.training, exclude=(*TRAINING_NOT_IDENTITY, *other)),
        }
        if self.protocol != DEFAULT_PROTOCOL:
            ident["protocol"] = self.protocol
        if kind == "dg":
            ident["objective"] = self.objective.identity()
        else:
            ident["aggregator"] = self.aggregator.identity()
        return ident

    def hash(self) -> str:
        return _digest(self.identity())

    def hparams_hash(self) -> str:
        """The identity without the trial seed and the held-out envs: runs of one hyper-parameter setting
        (DomainBed's ``hparams_seed``), which model selection chooses between. A start a sweep planned
        (``init_from: hash:…``, BOA from the SAM job of the same seed and envs) varies with them, so it is left out
        too: the BOA runs of every held-out set are one setting, as LOO selection needs."""
        ident = self.identity()
        ident["dataset"].pop("test_envs", None)
        ident["training"].pop("seed", None)
        if str(ident["optimizer"].get("init_from", "")).startswith("hash:"):
            ident["optimizer"].pop("init_from")
            if self.tracking.draw is not None:  # BOA from each draw of its start: one setting per draw
                ident["draw"] = self.tracking.draw
        return _digest(ident)

    @property
    def label(self) -> str:
        """The row label in reports: ``tracking.label`` (a sweep's method name), else the method, with the
        objective (DG) or aggregator (MTL) when they are not the default."""
        if self.tracking.label:
            return self.tracking.label
        method = self.optimizer.label
        if self.kind == "mtl":
            return self.aggregator.name if method == "erm" else f"{method}-{self.aggregator.name}"
        objective = self.objective.name
        if objective == "erm":
            return method
        return objective if method == "erm" else f"{objective}+{method}"

    def given(self) -> dict:
        """The recipe as written (and overridden): what a planner starts from to derive another one."""
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True)

    def flat(self) -> dict[str, Any]:
        return flatten_dict(self.model_dump(mode="json", by_alias=True))

    def idle(self) -> set[str]:
        """Dotted keys that do not act on this run: a choice's settings that its other settings switch off, the
        training and dataset settings of the other kind of dataset (MTL epochs on a DG run), the section of the
        other kind (a DG run's aggregator, an MTL run's objective), backbone settings the backbone does not read."""
        kind, flat = self.kind, self.flat()
        idle = {f"training.{k}" for k in self._training_idle()}
        idle |= {f"dataset.{k}" for k in DG_ONLY_DATASET} if kind == "mtl" else set()
        other = "aggregator" if kind == "dg" else "objective"
        idle |= {k for k in flat if k == other or k.startswith(other + ".")}
        for section in ("optimizer", "objective", "aggregator"):
            part = getattr(self, section)
            if section != other and part is not None:
                idle |= {f"{section}.{k}" for k in part.idle()}
        reads = set(MODELS.entry(self.backbone.name).settings) if self.backbone.name in MODELS else set()
        idle |= {k for k in flat if k.startswith("backbone.") and k != "backbone.name"
                 and k.split(".", 1)[1].split(".")[0] not in reads}
        idle |= {f"backbone.{k}" for k in self.backbone.idle()}
        return idle & set(flat)

    def _training_idle(self) -> set[str]:
        """Training settings that do not act: the other kind of dataset's; and a DG run counted in epochs reads
        training.epochs (an MTL setting otherwise) and evaluates after each, so its steps and checkpoint period
        do not act."""
        idle = set(TRAINING_ONLY["mtl" if self.kind == "dg" else "dg"])
        if self.kind == "dg" and self.training.unit == "epochs":
            idle = (idle - {"epochs"}) | {"steps", "checkpoint_freq"}
        return idle

    def acting(self) -> dict[str, Any]:
        """``flat()`` without the idle keys: the params a run logs."""
        idle = self.idle()
        return {k: v for k, v in self.flat().items() if k not in idle}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


def _digest(data: dict) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


KIND_NAMES = {"dg": "a domain generalization dataset", "mtl": "a multi-task dataset"}


def _misfit(key: str, value, message: str):
    """A validation error located at ``key`` of the section being validated (so it names file, line, key)."""
    raise ValidationError.from_exception_data("recipe", [
        {"type": PydanticCustomError("misfit", message), "loc": (key,), "input": value}])


def _choose(registry: Registry, default: str, value, handler, info: ValidationInfo):
    """Validate a section with the settings class its name picks (``optimizer.method``, ``objective.name``,
    ``aggregator.name``), then check that the choice fits the dataset."""
    if isinstance(value, Choice):
        chosen = value
    elif isinstance(value, dict):
        tag = registry.get(registry.names()[0]).tag
        name = value.get(tag, default)
        try:
            settings_class = registry.get(registry.check(name))
        except UserError as exc:
            _misfit(tag, name, str(exc))
        chosen = settings_class.model_validate(value)
    else:
        return handler(value)  # "Input should be a valid dictionary"
    dataset = info.data.get("dataset")
    if dataset is None:
        return chosen
    if dataset.kind not in chosen.fits:
        _misfit(chosen.tag, chosen.choice, f"{registry.kind} '{chosen.choice}' does not act on {dataset.name} "
                                           f"({KIND_NAMES[dataset.kind]})")
    problem = chosen.misfit(dataset.kind)
    if problem:
        _misfit(*problem)
    return chosen


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


CHOICES = {"optimizer": METHODS, "objective": OBJECTIVES, "aggregator": AGGREGATORS}
DEFAULT_CHOICE = {"optimizer": "sage", "objective": "erm", "aggregator": "ls"}


def _chosen_class(section: str, data: dict):
    """The settings class a section's name picks in ``data`` (the raw recipe), or None if unknown."""
    registry = CHOICES[section]
    given = data.get(section) if isinstance(data.get(section), dict) else {}
    tag = registry.get(registry.names()[0]).tag
    name = given.get(tag, DEFAULT_CHOICE[section])
    return registry.get(name) if name in registry else None


def _model_at(path: tuple, data: dict) -> type[BaseModel] | None:
    model: Any = Recipe
    for i, part in enumerate(path):
        if i == 0 and part in CHOICES:
            model = _chosen_class(part, data)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown_key(loc: tuple, data: dict) -> str:
    parent = _model_at(loc[:-1], data)
    key = loc[-1]
    if parent is not None and loc[0] in CHOICES and issubclass(parent, Choice):
        registry = CHOICES[loc[0]]
        owner = [n for n in registry.names() if key in _keys(registry.get(n))
                 or key in _keys(registry.get(n).model_fields.get("hparams").annotation
                                 if "hparams" in registry.get(n).model_fields else BaseModel)]
        if owner:
            return (f"not a setting of {registry.kind} '{parent.model_fields[parent.tag].default}' "
                    f"(it belongs to {', '.join(repr(o) for o in owner[:3])})")
    hint = did_you_mean(key, _keys(parent)) if parent else ""
    return f"unknown key{hint}"


def _describe(err: dict, data: dict) -> str:
    loc = tuple(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_key(loc, data)
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] not in ("value_error", "assertion_error", "misfit") and "input" in err and not isinstance(
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


def _settings_of(section: str, name) -> set[str] | None:
    registry = CHOICES[section]
    if name not in registry:
        return None
    return set(_keys(registry.get(name)))


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """``data`` (a recipe as plain data) with ``overrides`` (dotted key → value) applied, as a new dict.

    An override that switches a section to another method, objective or aggregator drops the settings the
    recipe gave for the old one that the new one does not have (a SAGE recipe's γ when ``optimizer.method``
    becomes ``sam``); a setting given in the overrides themselves is kept, and refused if it does not act.
    """
    data = json.loads(json.dumps(data))  # a deep copy of plain data (fast: a thousand jobs are planned at once)
    for section, registry in CHOICES.items():
        tag = registry.get(registry.names()[0]).tag
        switch = overrides.get(f"{section}.{tag}")
        current = data.get(section)
        if switch is None or not isinstance(current, dict):
            continue
        if switch == current.get(tag, DEFAULT_CHOICE[section]):
            continue
        keep = _settings_of(section, switch)
        if keep is None:
            continue  # an unknown name: validation reports it
        data[section] = {k: v for k, v in current.items() if k in keep and k != "hparams"}
    for dotted, value in overrides.items():
        _set_path(data, dotted, value)
    return data


def validation_message(exc: ValidationError, data: dict) -> tuple[str, str]:
    """(dotted key, message) of the first error."""
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]), _describe(err, data)


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise UserError(f"--set '{item}': expected KEY=VALUE, e.g. --set optimizer.rho=1e-5")
        if not value.strip():  # YAML would read it as null: the method's default, silently
            raise UserError(f"--set '{item}': empty value; give a value (or null to unset it)")
        overrides[key.strip()] = parse_value(value)
    return overrides


MAX_YAML_BYTES = 1 << 20  # a recipe or an experiment file is a page of text
MAX_YAML_NODES = 100_000  # after alias expansion: ~100× the largest experiment file shipped


def read_yaml(path: Path, what: str) -> tuple[Any, Any]:
    """(node tree, data) of a small YAML file; any problem — missing, unreadable, too long a name, not UTF-8
    text, malformed, or aliases that expand past ``MAX_YAML_NODES`` (a "billion laughs" file: a few hundred
    bytes that would take gigabytes and minutes to build) — is a one-line ``UserError`` before anything is built."""
    source = str(path)
    try:
        if not path.is_file():
            raise UserError(f"{source}: {what} file not found")
        raw = path.read_bytes()[:MAX_YAML_BYTES + 1]
    except OSError as exc:
        raise UserError(f"{source[:120]}{'…' if len(source) > 120 else ''}: cannot read the {what} file "
                        f"({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"{source}: over {MAX_YAML_BYTES >> 20} MB; a {what} file is a page of YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: not a text file (byte {exc.start} is not UTF-8); a {what} is YAML") from None
    try:
        tree = yaml.compose(text, Loader=_Loader)
        if tree is not None:
            _bounded(tree, source)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{where}: malformed YAML: {problem}") from None
    return tree, data


def _bounded(tree, source: str) -> None:
    """Count the nodes the document expands to (an alias counts its whole subtree again), stopping at the
    bound; aliases make the tree a graph whose shared parts are counted once each by memo."""
    sizes: dict[int, int] = {}

    def size(node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise UserError(f"{source}: an alias refers to a node that contains it (recursive YAML)")
            return sizes[key]
        if depth > 200:
            raise UserError(f"{source}: nested over 200 levels deep; a recipe is a few levels deep")
        sizes[key] = -1
        children = node.value if isinstance(node.value, list) else []
        total = 1
        for child in children:
            for part in (child if isinstance(child, tuple) else (child,)):
                total += size(part, depth + 1)
                if total > MAX_YAML_NODES:
                    raise UserError(f"{source}: its aliases expand to over {MAX_YAML_NODES:,} values; a recipe "
                                    "this large is a mistake (or an alias bomb)")
        sizes[key] = total
        return total

    size(tree, 0)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate a recipe; any problem is a one-line ``UserError``."""
    path = Path(path)
    source = str(path)
    tree, data = read_yaml(path, "recipe")
    if data is None:
        raise UserError(f"{source}: the recipe is empty; see recipes/quickstart.yaml for the format")
    if not isinstance(data, dict):
        raise UserError(f"{source}:1: a recipe must be a mapping of sections (dataset, optimizer, ...), "
                        f"not a {type(data).__name__}")
    lines = _key_lines(tree, source=source)
    overrides = overrides or {}
    data = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        dotted, message = validation_message(exc, data)
        loc = tuple(dotted.split("."))
        if any(dotted == k or dotted.startswith(k + ".") or k.startswith(dotted + ".") for k in overrides):
            where = f"--set {dotted}"
        else:
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            where = f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"
        raise UserError(f"{where}: {message}") from None
    except UserError as exc:  # a registry lookup outside pydantic's wrapping
        raise UserError(f"{source}: {exc}") from None
