"""The MTL ``.npy`` layouts (torch-free, so ``sage datasets`` and the downloader can check them).

``root/{train,val}/image/{i}.npy`` (H, W, 3 float in [0, 1]), ``label/{i}.npy`` (H, W; −1 ignored; Cityscapes:
``label_7/``), ``depth/{i}.npy`` (H, W, 1; 0 = no measurement), ``normal/{i}.npy`` (H, W, 3; NYU only), as the
MTAN repository (lorenmt/mtan) ships them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DenseSpec:
    tasks: tuple[str, ...]  # among "segmentation", "depth", "normal"
    label_dir: str
    n_classes: int
    rel_scale: float = 1.0  # Table 2 states Cityscapes' relative depth error in percent


DENSE = {
    "nyuv2": DenseSpec(("segmentation", "depth", "normal"), "label", 13),
    "cityscapes": DenseSpec(("segmentation", "depth"), "label_7", 7, rel_scale=100.0),
}
FOLDERS = {"segmentation": None, "depth": "depth", "normal": "normal"}  # None: the spec's label_dir
SPLITS = ("train", "val")


def modality_dirs(split_dir: Path, spec: DenseSpec) -> dict[str, Path]:
    dirs = {"image": split_dir / "image", "segmentation": split_dir / spec.label_dir}
    dirs.update({task: split_dir / FOLDERS[task] for task in spec.tasks if FOLDERS[task]})
    return dirs


def check_split(split_dir: Path, spec: DenseSpec) -> tuple[int, list[str]]:
    """(image count, problems) of one split folder."""
    dirs = modality_dirs(split_dir, spec)
    missing = [f"missing modality folder {d}" for d in dirs.values() if not d.is_dir()]
    if missing:
        return 0, missing
    counts = {name: len(list(d.glob("*.npy"))) for name, d in dirs.items()}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{dirs[n]}: {c}" for n, c in counts.items())
        return counts["image"], [f"image count differs between modalities ({detail})"]
    if counts["image"] == 0:
        return 0, [f"no images in {dirs['image']}"]
    return counts["image"], []
