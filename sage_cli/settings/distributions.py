"""The distributions a random search draws a setting from, declared beside the setting (``settings/``,
``sections.py``) with their source. Each draws exactly as DomainBed's ``hparams_registry`` writes its lambdas
(facebookresearch/DomainBed ``domainbed/hparams_registry.py``: ``10**r.uniform(a, b)``, ``int(2**r.uniform(a, b))``,
``r.choice([...])`` on a ``numpy.random.RandomState``), so that under DomainBed's seeding the values are its own.
Torch-free and numpy-free at import: a recipe loads without them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def seed_hash(*args) -> int:
    """DomainBed's ``misc.seed_hash``: an integer seed from any arguments (md5 of their ``str`` tuple, mod 2³¹)."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


@dataclass(frozen=True)
class Dist:
    """``kind``: log10 (10^U(a, b)), log2 (2^U(a, b)), uniform (U(a, b)) or choice (one of ``args``); the value is
    passed through ``cast`` (int for counts). ``domainbed``: DomainBed's name for the setting where DomainBed draws
    it (its per-setting seed is derived from that name)."""

    kind: str
    args: tuple
    cast: type = float
    domainbed: str = ""
    source: str = ""

    def draw(self, rng):
        if self.kind == "choice":
            value = rng.choice(list(self.args))
        else:
            u = rng.uniform(*self.args)
            value = {"log10": lambda: 10 ** u, "log2": lambda: 2 ** u, "uniform": lambda: u}[self.kind]()
        return self.cast(value)

    def describe(self) -> str:
        a = ", ".join(map(str, self.args))
        text = {"log10": f"10^U({a})", "log2": f"2^U({a})", "uniform": f"U({a})", "choice": "{" + a + "}"}[self.kind]
        return f"int({text})" if self.cast is int else text


@dataclass(frozen=True)
class ByDataset:
    """A distribution that depends on the dataset, as DomainBed's do: ``small`` for its small-image datasets (its
    ``SMALL_IMAGES``, here the embedded digits), ``named`` by DomainBed dataset name, else ``default``. None: the
    setting is not searched there (DomainBed draws weight decay 0 on small images)."""

    default: Dist
    small: Dist | None = None
    named: dict[str, Dist] = field(default_factory=dict)

    def pick(self, dataset: str, small: bool) -> Dist | None:
        if small:
            return self.small
        return self.named.get(dataset, self.default)


DOMAINBED = "facebookresearch/DomainBed domainbed/hparams_registry.py"
SAGM = "Wang-pengfei/SAGM domainbed/hparams_registry.py (SAGM_DG)"
