"""Linear scalarisation (LS)."""

from __future__ import annotations

from .base import LossWeighting


class LS(LossWeighting):
    """Linear scalarisation: Σ_k L_k (the references' convention)."""

    def total_loss(self, losses):
        return losses.sum()
