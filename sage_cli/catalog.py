"""Every built-in dataset and backbone by name → where it lives and what it fits; and the registries of
optimizer methods, objectives and MTL aggregators, whose settings classes register themselves beside their
definitions. Nothing here imports torch: recipes are checked without it.

Adding a dataset or backbone is one module plus one entry here; a method, objective or aggregator is one
implementation module plus its settings class (see CONTRIBUTING.md).
"""

from __future__ import annotations

from .registry import Entry, Registry
from .settings.aggregators import AGGREGATORS
from .settings.methods import METHODS
from .settings.objectives import OBJECTIVES

__all__ = ["AGGREGATORS", "DATASETS", "METHODS", "MODELS", "OBJECTIVES", "PROTOCOLS", "dataset_kind"]

IMAGE_BACKBONES = ("clip", "resnet50", "small_cnn")
DENSE_BACKBONES = ("mtan", "mtan_narrow")


def _domainbed(cls: str, envs: tuple[str, ...]) -> Entry:
    return Entry(f"sage_cli.data.domainbed:{cls}", "dg", IMAGE_BACKBONES, envs)


# Environments in DomainBed's order (sorted folder names): recipe checks need their count.
DATASETS = Registry("dataset", {
    "rotated_digits": Entry("sage_cli.data.digits:RotatedDigits", "dg", ("small_cnn",),
                            ("0", "15", "30", "45", "60", "75"), in_memory=True),
    "pacs": _domainbed("PACS", ("art_painting", "cartoon", "photo", "sketch")),
    "vlcs": _domainbed("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007")),
    "officehome": _domainbed("OfficeHome", ("Art", "Clipart", "Product", "Real World")),
    "terraincognita": _domainbed("TerraIncognita", ("location_100", "location_38", "location_43", "location_46")),
    "domainnet": _domainbed("DomainNet", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")),
    # multi-task benchmarks: an entry is a loader ``(dataset settings) -> MTLData``
    "nyuv2": Entry("sage_cli.mtl.data:nyuv2", "mtl", DENSE_BACKBONES),
    "cityscapes": Entry("sage_cli.mtl.data:cityscapes", "mtl", DENSE_BACKBONES),
    "mtl_digits": Entry("sage_cli.mtl.data:mtl_digits", "mtl", ("digit_pairs_cnn",), in_memory=True),
})

# DG backbones: ``(input_shape, n_classes, backbone settings, class names) -> Classifier``;
# MTL ones: ``(tasks, n_classes, backbone settings) -> nn.Module``. ``settings``: the keys each one reads.
MODELS = Registry("backbone", {
    # revision 1: GroupNorm instead of BatchNorm over the concatenated batch (per-domain gradients in one backward)
    "small_cnn": Entry("sage_cli.models.cnn:small_cnn", "dg", revision=1),
    "clip": Entry("sage_cli.models.clip:clip", "dg", settings=("pretrained", "model", "head", "prompt")),
    "resnet50": Entry("sage_cli.models.resnet:resnet50", "dg", settings=("pretrained", "freeze_bn")),
    "mtan": Entry("sage_cli.mtl.models:mtan", "mtl"),
    "mtan_narrow": Entry("sage_cli.mtl.models:mtan_narrow", "mtl"),
    "digit_pairs_cnn": Entry("sage_cli.mtl.models:digit_pairs_cnn", "mtl"),
})


# the training protocol of each kind of dataset (``train.loop.TrainingProtocol``)
PROTOCOLS = Registry("protocol", {"dg": "sage_cli.train.dg:PROTOCOL", "mtl": "sage_cli.mtl.train:PROTOCOL"})


def dataset_kind(name: str) -> str:
    """``dg`` or ``mtl``."""
    return DATASETS.entry(name).kind
