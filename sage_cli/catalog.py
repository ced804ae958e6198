"""Every built-in dataset and backbone by name → where it lives and what it fits; and the registries of
optimizer methods, objectives and MTL aggregators, whose settings classes register themselves beside their
definitions. Nothing here imports torch: recipes are checked without it.

Adding a dataset is its card (cards.py; a DomainBed-layout folder needs nothing else), a backbone one module plus
one entry here; a method, objective or aggregator is one
implementation module plus its settings class (see CONTRIBUTING.md).
"""

from __future__ import annotations

from .cards import CARDS, DatasetCard
from .registry import Entry, Registry
from .settings.aggregators import AGGREGATORS
from .settings.methods import METHODS
from .settings.objectives import OBJECTIVES

__all__ = ["AGGREGATORS", "DATASETS", "METHODS", "MODELS", "OBJECTIVES", "PROTOCOLS", "card", "dataset_kind", "folder_cards"]

# every dataset's card (cards.py), by name
DATASETS = Registry("dataset", {card.name: card for card in CARDS})

# DG backbones: ``(input_shape, n_classes, backbone settings, class names) -> Classifier``;
# MTL ones: ``(tasks, n_classes, backbone settings) -> nn.Module``. ``settings``: the keys each one reads.
MODELS = Registry("backbone", {
    # revision 1: GroupNorm instead of BatchNorm over the concatenated batch (per-domain gradients in one backward)
    "small_cnn": Entry("sage_cli.models.cnn:small_cnn", "dg", revision=1),
    "clip": Entry("sage_cli.models.clip:clip", "dg", settings=("pretrained", "model", "head", "prompt", "tuning",
                                                                 "prompt_tokens", "prompt_depth")),
    "resnet50": Entry("sage_cli.models.resnet:resnet50", "dg", settings=("pretrained", "freeze_bn")),
    "mtan": Entry("sage_cli.mtl.models:mtan", "mtl"),
    "mtan_narrow": Entry("sage_cli.mtl.models:mtan_narrow", "mtl"),
    "digit_pairs_cnn": Entry("sage_cli.mtl.models:digit_pairs_cnn", "mtl"),
})


# the training loop of each kind of dataset (``train.loop.TrainingProtocol``); not the declared DG protocols
# (domainbed, disam) of ``protocols.py``, which are presets of recipe settings
PROTOCOLS = Registry("protocol", {"dg": "sage_cli.train.dg:PROTOCOL", "mtl": "sage_cli.mtl.train:PROTOCOL"})


def dataset_kind(name: str) -> str:
    """``dg`` or ``mtl``."""
    return DATASETS.entry(name).kind


def card(name: str) -> DatasetCard:
    """A dataset's card (a registered ``Entry`` that is not one reads as a card with its envs and kind)."""
    entry = DATASETS.entry(name)
    if isinstance(entry, DatasetCard):
        return entry
    return DatasetCard(entry.target, entry.kind, entry.backbones, entry.envs, in_memory=entry.in_memory, name=name,
                       layout="memory" if entry.in_memory else "custom")


def folder_cards() -> list[DatasetCard]:
    """The cards of the DomainBed-layout image folders, in report order."""
    cards = [card(n) for n in DATASETS.names()]
    return sorted((c for c in cards if c.folder), key=lambda c: (c.report_order, c.name))
