"""MTL data: NYU-v2 and Cityscapes in the references' ``.npy`` layout, and two embedded benchmarks.

Layout: ``root/{train,val}/image/{i}.npy`` (H, W, 3 float in [0, 1]), ``label/{i}.npy`` (H, W; −1 ignored;
Cityscapes: ``label_7/``), ``depth/{i}.npy`` (H, W, 1; 0 = no measurement), ``normal/{i}.npy`` (H, W, 3; NYU
only). Training augmentation as in the references: a random scale-crop with scale in {1.0, 1.2, 1.5} (depth
divided by the scale) and a horizontal flip that negates the normals' x channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.layouts import DENSE, DenseSpec, check_split, modality_dirs
from ..errors import UserError


@dataclass
class MTLData:
    """A multi-task benchmark: train and test sets, task names, and its per-epoch test metrics."""

    train: object
    test: object
    tasks: tuple[str, ...]
    n_classes: int
    metrics: Callable  # (model, the test set's batches in order, device) -> {metric: value}
    eval_batch: int  # test samples per batch

    def test_indices(self) -> list[torch.Tensor]:
        """The test set in order, ``eval_batch`` samples at a time (loaded with ``task_batch``, no augmentation)."""
        n = len(self.test)
        return [torch.arange(i, min(i + self.eval_batch, n)) for i in range(0, n, self.eval_batch)]


def task_batch(ds, indices, train: bool, seeds=None):
    """(images, {task: targets}) for ``indices``; ``seeds`` fix each sample's augmentation."""
    if hasattr(ds, "batch"):
        return ds.batch(indices)
    seeds = seeds if seeds is not None else torch.zeros(len(indices), dtype=torch.long)
    items = [ds.load(int(i), train, int(s)) for i, s in zip(indices, seeds)]
    x = torch.stack([img for img, _ in items])
    targets = {t: torch.stack([tg[t] for _, tg in items]) for t in items[0][1]}
    return x, targets


def _dense(name: str, cfg) -> MTLData:
    """NYU-v2 or Cityscapes from ``dataset.root`` (or $SAGE_DATA), at ``<root>`` or ``<root>/<name>``."""
    from ..data.domainbed import data_root
    from .evaluate import dense_metrics
    from .metrics import CITYSCAPES, NYUV2

    spec = DENSE[name]
    base = data_root(cfg.root, must_exist=False)  # a missing root is reported with its layout below
    base = base / name if (base / name / "train").is_dir() else base
    if not (base / "train").is_dir():
        raise UserError(f"{name}: expected {base}/train and {base}/val in the .npy layout")
    train, test = DenseDataset(base, "train", spec), DenseDataset(base, "val", spec)
    check_divisible(train.load(0)[0].shape)
    benchmark = {"nyuv2": NYUV2, "cityscapes": CITYSCAPES}[name]

    metrics = partial(dense_metrics, n_classes=spec.n_classes, benchmark=benchmark, rel_scale=spec.rel_scale)
    return MTLData(train, test, spec.tasks, spec.n_classes, metrics, eval_batch=4)


# registry entries (catalog.DATASETS): ``(dataset settings) -> MTLData``
nyuv2 = partial(_dense, "nyuv2")
cityscapes = partial(_dense, "cityscapes")


def mtl_digits(cfg=None) -> MTLData:
    from .evaluate import classification_metrics

    return MTLData(DigitPairs("train"), DigitPairs("test"), DigitPairs.tasks, DigitPairs.n_classes,
                   partial(classification_metrics, tasks=DigitPairs.tasks), eval_batch=512)


def random_scale_crop(image, label, depth, normal, generator, scales=(1.0, 1.2, 1.5)):
    """Crop a random 1/s window and resize it back (the references' RandomScaleCrop)."""
    height, width = image.shape[-2:]
    s = scales[int(torch.randint(len(scales), (1,), generator=generator))]
    h, w = int(height / s), int(width / s)
    i = int(torch.randint(height - h + 1, (1,), generator=generator))
    j = int(torch.randint(width - w + 1, (1,), generator=generator))

    def crop(t, mode):
        kwargs = {"align_corners": True} if mode == "bilinear" else {}
        return F.interpolate(t[None, :, i:i + h, j:j + w], size=(height, width), mode=mode, **kwargs)[0]

    image = crop(image, "bilinear")
    label = crop(label[None].float(), "nearest")[0].long()
    depth = crop(depth, "nearest") / s if depth is not None else None
    normal = crop(normal, "bilinear") if normal is not None else None
    return image, label, depth, normal


def horizontal_flip(image, label, depth, normal):
    image, label = image.flip(-1), label.flip(-1)
    depth = depth.flip(-1) if depth is not None else None
    if normal is not None:
        normal = normal.flip(-1).clone()
        normal[0] = -normal[0]  # the x component points the other way in a mirror image
    return image, label, depth, normal


class DenseDataset:
    """One split of NYU-v2 or Cityscapes; ``load(i, train, seed)`` → (image, {task: target})."""

    def __init__(self, root: str | Path, split: str, spec: DenseSpec):
        self.root, self.split, self.spec = Path(root), split, spec
        base = self.root / split
        self.dirs = modality_dirs(base, spec)
        self.n, problems = check_split(base, spec)
        if problems:
            raise UserError(problems[0])

    def __len__(self) -> int:
        return self.n

    def _read(self, name: str, i: int) -> np.ndarray:
        path = self.dirs[name] / f"{i}.npy"
        if not path.is_file():
            raise UserError(f"missing file {path}")
        return np.load(path)

    def load(self, i: int, train: bool = False, seed: int = 0):
        image = torch.from_numpy(self._read("image", i)).float().permute(2, 0, 1)
        label_path = self.dirs["segmentation"] / f"{i}.npy"
        label = torch.from_numpy(self._read("segmentation", i)).long()
        if label.shape != image.shape[1:]:
            raise UserError(f"{label_path}: shape {tuple(label.shape)} does not match the image's {tuple(image.shape[1:])}")
        if label.numel() and (label.min() < -1 or label.max() > self.spec.n_classes - 1):
            raise UserError(f"{label_path}: labels must lie in [-1, {self.spec.n_classes - 1}], found "
                            f"[{int(label.min())}, {int(label.max())}]")
        extra = {}
        for task in ("depth", "normal"):
            if task in self.spec.tasks:
                t = torch.from_numpy(self._read(task, i)).float()
                t = t[..., None] if t.ndim == 2 else t
                if t.shape[:2] != image.shape[1:]:
                    raise UserError(f"{self.dirs[task] / f'{i}.npy'}: shape {tuple(t.shape)} does not match the "
                                    f"image's {tuple(image.shape[1:])}")
                extra[task] = t.permute(2, 0, 1)
        depth, normal = extra.get("depth"), extra.get("normal")
        if train:
            g = torch.Generator().manual_seed(seed)
            image, label, depth, normal = random_scale_crop(image, label, depth, normal, g)
            if torch.rand((), generator=g) < 0.5:
                image, label, depth, normal = horizontal_flip(image, label, depth, normal)
        targets = {"segmentation": label}
        if depth is not None:
            targets["depth"] = depth
        if normal is not None:
            targets["normal"] = normal
        return image, targets


class DigitPairs:
    """Embedded two-task benchmark: two digits side by side (16×32); task 0 reads the left, task 1 the right.

    Train pairs are drawn from the first 1,400 digits, test pairs from the other 397, both with a fixed seed.
    """

    tasks = ("left", "right")
    n_classes = 10

    def __init__(self, split: str, n_pairs: int | None = None, seed: int = 0):
        from ..data.digits import digits_tensors

        images, labels = digits_tensors(16)
        pool = torch.arange(0, 1400) if split == "train" else torch.arange(1400, len(labels))
        n = n_pairs or (3000 if split == "train" else 1000)
        g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
        left = pool[torch.randint(len(pool), (n,), generator=g)]
        right = pool[torch.randint(len(pool), (n,), generator=g)]
        self.x = torch.cat([images[left], images[right]], dim=-1)
        self.y = torch.stack([labels[left], labels[right]], dim=1)

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, indices):
        return self.x[indices], {"left": self.y[indices, 0], "right": self.y[indices, 1]}


def toy_losses(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The two-objective 2-D toy of the CAGrad / Nash-MTL / FAMO papers (f1 scaled by ``scale``, FAMO: 0.1).

    Starting points used there: (−8.5, 7.5), (−8.5, 5), (0, 0), (9, 9), (10, −8).
    """
    lower = 5e-6
    x1, x2 = x[..., 0], x[..., 1]
    f1 = torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), lower).log() + 6
    f2 = torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), lower).log() + 6
    c1 = torch.clamp(torch.tanh(x2 * 0.5), 0)
    f1_sq = ((-x1 + 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    f2_sq = ((-x1 - 7).pow(2) + 0.1 * (-x2 - 8).pow(2)) / 10 - 20
    c2 = torch.clamp(torch.tanh(-x2 * 0.5), 0)
    f1 = (f1 * c1 + f1_sq * c2) * scale
    f2 = f2 * c1 + f2_sq * c2
    return torch.stack([f1, f2], dim=-1)


def check_divisible(shape, by: int = 32) -> None:
    h, w = shape[-2:]
    if h % by or w % by:
        raise UserError(f"MTAN needs image height and width divisible by {by}, got {h}×{w}")


