"""Scale-invariant loss weighting (SI)."""

from __future__ import annotations

import torch

from .base import LossWeighting


class SI(LossWeighting):
    """Scale-invariant: Σ_k log L_k."""

    def total_loss(self, losses):
        return torch.log(losses).sum()
