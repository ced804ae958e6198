"""RotatedDigits: DomainBed's RotatedMNIST built from scikit-learn's bundled digits (no download).

1,797 8×8 digits, upsampled to 16×16, shuffled with a fixed seed and dealt round-robin to six
environments rotated 0/15/30/45/60/75°, as DomainBed deals MNIST.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..catalog import card
from .splits import TensorEnv

SIZE = 16
DEAL_SEED = 0  # the dealing is part of the dataset's definition, the same for every trial


def _bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``load_digits`` gives them: (1797, 8, 8) floats 0–16 and their labels.

    Read from the file ``load_digits`` reads (``sklearn/datasets/data/digits.csv.gz``, one row of 64 pixels and
    the label per digit, scikit-learn 1.x) without importing scikit-learn: its import is ~1.2 s of every run's
    start on the embedded data. Where the file is not found, ``load_digits`` itself."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without running its __init__
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


def digits_tensors(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundled digits as (N, 1, size, size) floats in [0, 1] (bilinear upsampling) and their labels."""
    pixels, target = _bundled_digits()
    images = torch.tensor(pixels, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images, torch.tensor(target, dtype=torch.long)


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a (N, C, H, W) batch about its centre (bilinear, zeros outside)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=images.dtype)
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RotatedDigits:
    ENVIRONMENTS = list(card("rotated_digits").envs)  # rotation angles
    N_CLASSES = 10
    INPUT_SHAPE = (1, SIZE, SIZE)

    def __init__(self, root=None, **_):
        images, labels = digits_tensors()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(DEAL_SEED))
        images, labels = images[order], labels[order]
        n = len(self.ENVIRONMENTS)
        self.datasets = [
            TensorEnv(rotate(images[i::n], float(angle)), labels[i::n])
            for i, angle in enumerate(self.ENVIRONMENTS)
        ]
