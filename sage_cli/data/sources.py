"""Where each dataset comes from and how its archives become the layout ``sage datasets`` checks.

DomainBed's sources are those of its download script (facebookresearch/DomainBed,
``domainbed/scripts/download.py``): its Google Drive copies of PACS, VLCS and OfficeHome, the VisDA-2019
archives of DomainNet, and LILA's Caltech Camera Traps images and labels for TerraIncognita, which are
sorted into ``location_<n>/<class>/`` for locations 38, 43, 46 and 100 and DomainBed's ten classes. NYU-v2
and Cityscapes (128×256) are the pre-processed ``.npy`` folders that the MTAN repository (lorenmt/mtan,
README) links and FAMO and nash-mtl reuse. Sizes are the sources' listings, approximate; the real ones are
read from the server before anything is downloaded. None of these sources publishes a checksum: the SHA-256
of what was fetched is recorded, and a mirror's ``SHA256SUMS`` is verified.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from .fetch import Archive

GB = 10**9


def _drive(file_id: str) -> str:
    # Google Drive's direct download endpoint; confirm=t skips the "too large to scan" page of big files
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _dropbox(link: str) -> str:
    return link.replace("?dl=0", "?dl=1")  # dl=1: the folder as one zip


def holding(root: Path, names: tuple[str, ...]) -> Path:
    """The folder under ``root`` (itself, or the shallowest below it) that holds all of ``names``."""
    for folder in [root, *sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))]:
        if all((folder / n).is_dir() for n in names):
            return folder
    raise UserError(f"the archives hold no folder with {', '.join(names)}: the source's layout has changed")


def move_folder(extracted: Path, staged: Path, names: tuple[str, ...]) -> None:
    """The folder of ``names`` (env folders, or train/val) becomes ``staged``."""
    holding(extracted, names).rename(staged)


TERRA_LOCATIONS = ("38", "43", "46", "100")
TERRA_CLASSES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")


def sort_camera_traps(extracted: Path, staged: Path, names: tuple[str, ...]) -> None:
    """Caltech Camera Traps → ``location_<n>/<class>/<image>``, as DomainBed's script sorts it: every image
    of the four locations goes to the folder of each of its annotated classes among the ten."""
    labels = sorted(extracted.rglob("caltech_images_*.json")) or sorted(extracted.rglob("*.json"))
    if not labels:
        raise UserError("terraincognita: the labels archive holds no JSON file: the source's layout has changed")
    data = json.loads(labels[0].read_text())
    images = next((p.parent for p in extracted.rglob("*.jpg")), None)
    if images is None:
        raise UserError("terraincognita: the images archive holds no .jpg: the source's layout has changed")
    categories = {c["id"]: c["name"] for c in data["categories"]}
    classes_of: dict = {}
    for a in data["annotations"]:
        classes_of.setdefault(a["image_id"], set()).add(categories[a["category_id"]])
    for image in data["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        source = images / image["file_name"]
        for cls in sorted(classes_of.get(image["id"], ())):
            if cls in TERRA_CLASSES and source.is_file():
                folder = staged / f"location_{location}" / cls
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, folder / Path(image["file_name"]).name)


@dataclass(frozen=True)
class Source:
    directory: str  # the folder under the data root
    names: tuple[str, ...]  # what the finished folder holds: env folders, or train/val
    archives: tuple[Archive, ...]
    size_gb: float  # download size, approximate (README table)
    arrange: Callable[[Path, Path, tuple[str, ...]], None] = move_folder


def _dg(name: str, archives, size_gb: float, arrange=move_folder) -> Source:
    from ..catalog import card

    return Source(card(name).directory, card(name).envs, tuple(archives), size_gb, arrange)


VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source/"


def sources() -> dict[str, Source]:
    return {
        "pacs": _dg("pacs", [Archive(_drive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip", int(0.18 * GB))], 0.18),
        "vlcs": _dg("vlcs", [Archive(_drive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"), "VLCS.tar.gz", int(1.1 * GB))], 1.1),
        "officehome": _dg("officehome", [Archive(_drive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip",
                                                 int(1.1 * GB))], 1.1),
        "terraincognita": _dg("terraincognita", [
            Archive("https://lilablobssc.blob.core.windows.net/caltechcameratraps/eccv_18_all_images_sm.tar.gz",
                    "eccv_18_all_images_sm.tar.gz", int(6.0 * GB)),
            Archive("https://lilablobssc.blob.core.windows.net/caltechcameratraps/labels/caltech_camera_traps.json.zip",
                    "caltech_camera_traps.json.zip", int(0.02 * GB)),
        ], 6.0, sort_camera_traps),
        "domainnet": _dg("domainnet", [
            Archive(VISDA + "groundtruth/clipart.zip", "clipart.zip", int(1.3 * GB)),
            Archive(VISDA + "infograph.zip", "infograph.zip", int(4.4 * GB)),
            Archive(VISDA + "groundtruth/painting.zip", "painting.zip", int(3.7 * GB)),
            Archive(VISDA + "quickdraw.zip", "quickdraw.zip", int(0.45 * GB)),
            Archive(VISDA + "real.zip", "real.zip", int(6.1 * GB)),
            Archive(VISDA + "sketch.zip", "sketch.zip", int(2.6 * GB)),
        ], 18.5),
        "nyuv2": Source("nyuv2", ("train", "val"), (Archive(
            _dropbox("https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0"), "nyuv2.zip",
            int(3.9 * GB)),), 3.9),
        "cityscapes": Source("cityscapes", ("train", "val"), (Archive(
            _dropbox("https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=0"), "cityscapes.zip",
            int(0.65 * GB)),), 0.65),
    }
