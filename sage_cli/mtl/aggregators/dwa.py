"""Dynamic weight average (Liu et al., CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossWeighting, setting


class DWA(LossWeighting):
    """Dynamic weight average (Liu et al.): w_k = K·softmax_k(r_k / T), r_k = L_k(t−1)/L_k(t−2) over epochs."""

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.temperature = float(setting(cfg, "dwa_temperature"))
        self.history: list[list[float]] = []

    def weights(self) -> torch.Tensor:
        if len(self.history) < 2:
            return torch.ones(self.n_tasks)
        r = torch.tensor(self.history[-1]) / torch.tensor(self.history[-2])
        return self.n_tasks * F.softmax(r / self.temperature, dim=-1)

    def total_loss(self, losses):
        w = self.weights().to(losses)
        self.last_weights = w
        return (w * losses).sum()

    def end_epoch(self, mean_losses):
        self.history = (self.history + [[float(v) for v in mean_losses]])[-2:]

    def state_dict(self):
        return {**super().state_dict(), "history": self.history}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.history = [list(map(float, h)) for h in state.get("history", [])]
