"""RotatedDigits: DomainBed's RotatedMNIST built from scikit-learn's bundled digits (no download).

1,797 8×8 digits, upsampled to 16×16, shuffled with a fixed seed and dealt round-robin to six
environments rotated 0/15/30/45/60/75°, as DomainBed deals MNIST.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..catalog import card
from .splits import TensorEnv

SIZE = 16
DEAL_SEED = 0  # the dealing is part of the dataset's definition, the same for every trial


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
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(DEAL_SEED))
        images, labels = images[order], labels[order]
        n = len(self.ENVIRONMENTS)
        self.datasets = [
            TensorEnv(rotate(images[i::n], float(angle)), labels[i::n])
            for i, angle in enumerate(self.ENVIRONMENTS)
        ]
