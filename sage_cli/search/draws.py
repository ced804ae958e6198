"""The draws of a random search (DomainBed's protocol: Gulrajani & Lopez-Paz, ICLR 2021, and
facebookresearch/DomainBed ``domainbed/scripts/sweep.py``): N draws per (method, dataset), draw 0 being the
recipe's own values, each draw a set of overrides of the searched settings.

Seeding. ``sage`` (the default): a draw depends on (method label, dataset, draw index, setting) only, so every
trial seed repeats the same N configurations. ``domainbed``: DomainBed's own, where draw d of trial t is
``random_hparams(algorithm, dataset, seed_hash(d, t))`` and each setting's generator is
``RandomState(seed_hash(that seed, DomainBed's name for it))`` (the draws then also vary with the trial seed, its
issue #111); for the settings DomainBed has, the values are DomainBed's."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from ..settings import Section
from ..settings.distributions import Dist, seed_hash

# DomainBed trains DANN and CDANN's featurizer and classifier with ``lr_g`` and ``weight_decay_g``: sage's optimizer
# settings are those
DOMAINBED_RENAMES = {("dann", "optimizer.lr"): "lr_g", ("cdann", "optimizer.lr"): "lr_g",
                     ("dann", "optimizer.weight_decay"): "weight_decay_g",
                     ("cdann", "optimizer.weight_decay"): "weight_decay_g"}


class SearchConfig(Section):
    """``search:`` of an experiment file (``sage sweep --n-hparams N`` sets ``n``)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=1)  # draws per (method, dataset), draw 0 = the recipe's values
    # default: each method's own searched settings and the learning rate; all: every declared one; or a list
    keys: Literal["default", "all"] | list[str] = "default"
    seeding: Literal["sage", "domainbed"] = "sage"
    # early stopping, off by default as DomainBed runs every draw to the end; unset: each recipe's sweep.prune and
    # sweep.asha_eta (so `sage sweep --set sweep.prune=median` turns it on without editing the file)
    prune: Literal["none", "median", "asha"] | None = None
    asha_eta: int | None = Field(None, ge=2)  # ASHA's reduction factor: the top 1/eta of a rung go on


def _small(dataset: str) -> bool:
    """DomainBed draws other ranges on its small-image datasets (``SMALL_IMAGES``, its in-memory MNISTs); sage's
    in-memory datasets are its digits."""
    from ..catalog import card

    return card(dataset).layout == "memory"


def declared(recipe) -> dict[str, Dist]:
    """Every setting of ``recipe``'s method, objective and training that has a distribution, by dotted key, as
    drawn for its dataset. A method that does not train (BOA) has none."""
    from ..catalog import card

    if type(recipe.optimizer).task:
        return {}
    name, small = card(recipe.dataset.name).domainbed_name or recipe.dataset.name, _small(recipe.dataset.name)
    sources = {"optimizer": type(recipe.optimizer).search, "training": type(recipe.training).search}
    if recipe.kind == "dg":
        sources["objective.hparams"] = type(recipe.objective.hparams).search
    out = {}
    for prefix, table in sources.items():
        for key, dist in table.items():
            picked = dist.pick(name, small) if hasattr(dist, "pick") else dist
            if picked is not None:
                out[f"{prefix}.{key}"] = picked
    return out


def searched_keys(recipe, keys) -> list[str]:
    """The dotted keys a search draws for ``recipe``: ``default`` (the method's and objective's own settings, and
    the learning rate), ``all`` (every declared one) or a list (each must be declared)."""
    from ..errors import UserError
    from ..settings.methods import Method

    table = declared(recipe)
    if keys == "all":
        return list(table)
    if keys == "default":
        own = [k for k in table if k.startswith("objective.") or
               k.startswith("optimizer.") and k.split(".", 1)[1] not in Method.search]
        return [k for k in ("optimizer.lr", *own) if k in table]
    unknown = [k for k in keys if k not in table]
    if unknown and table:
        raise UserError(f"search.keys: {unknown[0]} has no distribution for {recipe.label} on {recipe.dataset.name} "
                        f"(declared: {', '.join(table)})")
    return [k for k in keys if k in table]


def draw(recipe, keys: list[str], index: int, trial_seed: int, seeding: str, label: str) -> dict:
    """The overrides of draw ``index`` (none for draw 0: the recipe's values)."""
    import numpy as np

    if index == 0:
        return {}
    table = declared(recipe)
    objective = recipe.objective.name if recipe.kind == "dg" else ""
    out = {}
    for key in keys:
        dist = table[key]
        if seeding == "domainbed":
            name = DOMAINBED_RENAMES.get((objective, key)) or dist.domainbed or key
            seed = seed_hash(seed_hash(index, trial_seed), name)
        else:
            seed = seed_hash("sage", label, recipe.dataset.name, index, key)
        value = dist.draw(np.random.RandomState(seed))
        out[key] = value.item() if hasattr(value, "item") else value
    return out
