"""Dataset cards: each dataset's facts in one torch-free entry, read by the data loaders, the downloader, the
evaluation cache, ``sage datasets`` and the reports. Adding a DomainBed-layout dataset is its card (and, to
download it, a source in ``data/sources.py``); ``tests/test_extending.py`` registers one from its card alone.

Facts of DomainBed's datasets are those of facebookresearch/DomainBed ``domainbed/datasets.py`` (environment
folders in sorted order, class counts, class names) and ``domainbed/scripts/download.py`` (folder names). PACS's
official train/crossval split files are those of its authors (Li et al., "Deeper, Broader and Artier Domain
Generalization", ICCV 2017), in the copy the DISAM code ships (MediaBrain-SJTU/DISAM ``code/data/PACS_split_txt.zip``:
``<env>_<part>_kfold.txt``, lines ``<env>/<class>/<file> <1-based label>``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Entry

IMAGE_BACKBONES = ("clip", "resnet50", "small_cnn")
DENSE_BACKBONES = ("mtan", "mtan_narrow")
FOLDER_LOADER = "sage_cli.data.domainbed:FolderDataset"


@dataclass(frozen=True)
class DatasetCard(Entry):
    """A registry entry of ``catalog.DATASETS`` with everything known of the dataset without reading it.

    ``target`` is the loader, called with the card (``card=``); DomainBed-layout folders use
    ``FOLDER_LOADER``. Not for: how a run uses the data (splits, transforms, batches: the recipe's protocol)."""

    name: str = ""
    layout: str = "domainbed"  # domainbed: root/<directory>/<env>/<class>/<image>; memory; npy (MTL)
    n_classes: int = 0
    directory: str = ""  # the folder under the data root
    domainbed_name: str = ""  # DomainBed's class name: its output rows, and the paper's Table 1 column
    # official split files, relative to the dataset folder: {env} and {part}; parts: (train, validation)
    split_files: str | None = None
    split_parts: tuple[str, str] = ("train", "crossval")
    report_order: int = 100  # tables list datasets by this, then by name

    @property
    def folder(self) -> bool:
        return self.layout == "domainbed"


def folder_card(name: str, directory: str, domainbed_name: str, envs: tuple[str, ...], n_classes: int,
                order: int, **extra) -> DatasetCard:
    """A DomainBed-layout image folder's card."""
    return DatasetCard(FOLDER_LOADER, "dg", IMAGE_BACKBONES, envs, name=name, n_classes=n_classes,
                       directory=directory, domainbed_name=domainbed_name, report_order=order, **extra)


CARDS = [
    DatasetCard("sage_cli.data.digits:RotatedDigits", "dg", ("small_cnn",), ("0", "15", "30", "45", "60", "75"),
                in_memory=True, name="rotated_digits", layout="memory", n_classes=10, report_order=0),
    folder_card("pacs", "PACS", "PACS", ("art_painting", "cartoon", "photo", "sketch"), 7, 1,
                split_files="splits/{env}_{part}_kfold.txt"),
    folder_card("vlcs", "VLCS", "VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5, 2),
    folder_card("officehome", "office_home", "OfficeHome", ("Art", "Clipart", "Product", "Real World"), 65, 3),
    folder_card("terraincognita", "terra_incognita", "TerraIncognita",
                ("location_100", "location_38", "location_43", "location_46"), 10, 4),
    folder_card("domainnet", "domain_net", "DomainNet",
                ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345, 5),
    # multi-task benchmarks: the target is a loader ``(dataset settings) -> MTLData``; layouts in data/layouts.py
    DatasetCard("sage_cli.mtl.data:nyuv2", "mtl", DENSE_BACKBONES, name="nyuv2", layout="npy", n_classes=13,
                directory="nyuv2", report_order=10),
    DatasetCard("sage_cli.mtl.data:cityscapes", "mtl", DENSE_BACKBONES, name="cityscapes", layout="npy",
                n_classes=7, directory="cityscapes", report_order=11),
    DatasetCard("sage_cli.mtl.data:mtl_digits", "mtl", ("digit_pairs_cnn",), in_memory=True, name="mtl_digits",
                layout="memory", n_classes=10, report_order=12),
]


def names(layout: str | None = None) -> str:
    """The built-in datasets' names (of one ``layout``; None: every one read from disk), space-separated: for
    help texts."""
    chosen = [c for c in CARDS if (c.layout == layout if layout else not c.in_memory)]
    return " ".join(c.name for c in sorted(chosen, key=lambda c: c.report_order))
