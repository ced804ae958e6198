"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossWeighting


class RLW(LossWeighting):
    """Random loss weighting (Lin et al.): w = softmax(z), z ~ N(0, I), drawn afresh each step."""

    def total_loss(self, losses):
        w = F.softmax(torch.randn(self.n_tasks, generator=self.generator), dim=-1).to(losses)
        self.last_weights = w.detach()
        return (w * losses).sum()
