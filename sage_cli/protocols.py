"""Declared protocols: everything about a DG run that is not the method, as named presets of recipe settings.

``protocol: domainbed`` (the default) is DomainBed's protocol and every setting's default, so a recipe without
a ``protocol:`` key keeps its identity. ``protocol: disam`` is the protocol of the SAGE authors' public precursor
code, on the DISAM code base (MediaBrain-SJTU/DISAM, cited per setting below). A preset only fills the settings a
recipe leaves out: any of them can be given to override it. The resolved protocol is printed by ``sage validate``,
logged with the run (the ``protocol`` param and the dataset and training params) and, when it is not ``domainbed``, its name is part of the run's
identity (the settings it changed are already).

Not for: the method (optimizer, objective, their settings) or where a run executes.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Setting(NamedTuple):
    value: Any
    source: str


DOMAINBED_SRC = "facebookresearch/DomainBed"
DISAM_SRC = "MediaBrain-SJTU/DISAM"

PRESETS: dict[str, dict[str, Setting]] = {
    "domainbed": {
        "dataset.split": Setting("holdout", f"{DOMAINBED_SRC} domainbed/scripts/train.py (misc.split_dataset)"),
        "dataset.holdout_fraction": Setting(0.2, f"{DOMAINBED_SRC} domainbed/scripts/train.py (--holdout_fraction)"),
        "dataset.train_transform": Setting("domainbed", f"{DOMAINBED_SRC} domainbed/datasets.py (augment_transform)"),
        "dataset.eval_transform": Setting("resize", f"{DOMAINBED_SRC} domainbed/datasets.py (transform)"),
        "training.batch_sampling": Setting("per_env", f"{DOMAINBED_SRC} domainbed/scripts/train.py "
                                                      "(one InfiniteDataLoader per training env)"),
        "training.unit": Setting("steps", f"{DOMAINBED_SRC} domainbed/scripts/train.py (--steps)"),
        "training.selection": Setting("training_domain", f"{DOMAINBED_SRC} domainbed/model_selection.py "
                                                         "(IIDAccuracySelectionMethod)"),
        "training.test_split": Setting("in", f"{DOMAINBED_SRC} domainbed/model_selection.py (env{{t}}_in_acc)"),
    },
    "disam": {
        "dataset.split": Setting("official", f"{DISAM_SRC} code/data/pacs_dataset.py (<env>_train/crossval_kfold.txt); "
                                             "datasets without split files: a seeded holdout"),
        "dataset.holdout_fraction": Setting(0.1, f"{DISAM_SRC} code/data/officehome_dataset.py (split_list(…, 0.9))"),
        "dataset.train_transform": Setting("disam", f"{DISAM_SRC} code/configs/default.py (default_transform_train)"),
        "dataset.eval_transform": Setting("center_crop", f"{DISAM_SRC} code/configs/default.py "
                                                         "(default_transform_test)"),
        "training.batch_sampling": Setting("concat", f"{DISAM_SRC} code/data/utils.py (ConcatDataset of the source "
                                                     "domains, shuffle=True, drop_last=True)"),
        "training.unit": Setting("epochs", f"{DISAM_SRC} code/algorithms/ERM.py (run: an evaluation per epoch)"),
        "training.epochs": Setting(20, f"{DISAM_SRC} code/runs/run_trainer.py (--epochs default)"),
        "training.selection": Setting("merged_source", f"{DISAM_SRC} code/algorithms/ERM.py (best epoch on the merged "
                                                       "source validation set)"),
        "training.test_split": Setting("all", f"{DISAM_SRC} code/data/pacs_dataset.py (the test domain's whole "
                                              "'test' list)"),
    },
}
DEFAULT = "domainbed"
KEYS = tuple(PRESETS[DEFAULT]) + ("training.epochs",)  # what a protocol decides (epochs: when counted in epochs)


def resolved(recipe) -> dict[str, tuple[Any, str]]:
    """Each protocol setting of ``recipe`` → (value, where it came from: the preset and its source, or the
    recipe)."""
    preset = PRESETS[recipe.protocol]
    out = {}
    for key in KEYS:
        section, name = key.split(".")
        part = getattr(recipe, section)
        value = getattr(part, name)
        if key == "training.epochs" and recipe.training.unit != "epochs":
            continue
        given = name in part.model_fields_set
        setting = preset.get(key)
        out[key] = (value, "recipe" if given or setting is None else f"{recipe.protocol}: {setting.source}")
    return out


def apply_preset(recipe) -> None:
    """Fill the settings of ``recipe.protocol`` that the recipe left out (left unmarked as given, so a planner
    deriving another recipe from it starts from the preset again)."""
    for key, setting in PRESETS[recipe.protocol].items():
        section, name = key.split(".")
        part = getattr(recipe, section)
        if name not in part.model_fields_set:
            part.__dict__[name] = setting.value


def describe(recipe) -> list[str]:
    """The resolved protocol as lines: its name, then each setting, its value and where it came from."""
    from .catalog import card

    lines = [f"protocol {recipe.protocol}:"]
    for key, (value, source) in resolved(recipe).items():
        note = ""
        if key == "dataset.split" and value == "official" and not card(recipe.dataset.name).split_files:
            note = f" → {recipe.dataset.name} has no official split files: a seeded holdout"
        lines.append(f"  {key} = {value}{note}  [{source}]")
    return lines
