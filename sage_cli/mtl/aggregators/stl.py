"""Single-task learning (STL): one task's loss alone, for the Δm references."""

from __future__ import annotations

from .base import LossWeighting, setting


class STL(LossWeighting):
    """Single-task learning: only task ``stl_task``'s loss is trained."""

    def total_loss(self, losses):
        return losses[int(setting(self.cfg, "stl_task"))]
