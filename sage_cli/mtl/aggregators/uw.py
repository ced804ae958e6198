"""Uncertainty weighting (Kendall et al., CVPR 2018)."""

from __future__ import annotations

import torch

from .base import LossWeighting


class UW(LossWeighting):
    """Uncertainty weighting (Kendall et al.): Σ_k ½(exp(−s_k) L_k + s_k), s_k = log σ_k² learned."""

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.log_vars = torch.nn.Parameter(torch.zeros(n_tasks))

    def parameters(self):
        return [self.log_vars]

    def total_loss(self, losses):
        s = self.log_vars.to(losses)
        return (0.5 * (torch.exp(-s) * losses + s)).sum()

    def state_dict(self):
        return {**super().state_dict(), "log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
