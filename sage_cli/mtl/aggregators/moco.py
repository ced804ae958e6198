"""MoCo (Fernando et al., ICLR 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import GradientAggregator, setting


class MoCo(GradientAggregator):
    """MoCo (Fernando et al. 2023), as in LibMTL's implementation of the authors' code: each g_k rescaled to
    norm L_k; a tracking estimate y_k ← y_k − β_t (y_k − g_k) with β_t = β / t^σ_β; weights
    λ ← softmax(λ − γ_t (Y Yᵀ + ρI) λ) with γ_t = γ / t^σ_γ; update Yᵀλ. Defaults: β 0.5, σ_β 0.5, γ 0.1,
    σ_γ 0.5, ρ 0."""

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.beta = float(setting(cfg, "moco_beta"))
        self.beta_sigma = float(setting(cfg, "moco_beta_sigma"))
        self.gamma = float(setting(cfg, "moco_gamma"))
        self.gamma_sigma = float(setting(cfg, "moco_gamma_sigma"))
        self.rho = float(setting(cfg, "moco_rho"))
        self.t = 0
        self.y: torch.Tensor | None = None
        self.lambd = torch.full((n_tasks,), 1.0 / n_tasks, dtype=torch.float64)

    def combine(self, J, losses=None):
        self.t += 1
        losses = losses if losses is not None else torch.ones(self.n_tasks)  # each g_k rescaled to norm L_k
        G = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses.to(J).reshape(-1, 1)
        if self.y is None:
            self.y = torch.zeros_like(G)
        self.y = self.y - (self.beta / self.t ** self.beta_sigma) * (self.y - G)
        A = self.y @ self.y.T + self.rho * torch.eye(self.n_tasks, dtype=J.dtype, device=J.device)
        lam = self.lambd.to(J)
        self.lambd = F.softmax(lam - (self.gamma / self.t ** self.gamma_sigma) * (A @ lam), dim=-1)
        self.last_weights = self.lambd.float()
        return self.y.T @ self.lambd

    def state_dict(self):
        return {**super().state_dict(), "t": self.t, "y": self.y, "lambd": self.lambd}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.t, self.y, self.lambd = int(state["t"]), state["y"], state["lambd"]
