"""GAM: Gradient norm Aware Minimization (Zhang et al., CVPR 2023), four gradient evaluations per step,
following the authors' optimizer:

    g0 = ∇L(θ);                         g1 = ∇L(θ + ρ g0/‖g0‖)
    d  = g1 − g0 (≈ ρ·H ĝ0, the ascent direction of ‖∇L‖)
    θ2 = θ + ρ_n d/‖d‖;                  g2 = ∇L(θ2)
    θ3 = θ2 + ρ g2/‖g2‖;                 g3 = ∇L(θ3)
    m  = g0 + |β2| g2,  u = β1 g1 + β3 g3
    update along u − γ (m − cos(m, u) ‖m‖ u/‖u‖)        (θ restored exactly first)
"""

from __future__ import annotations

import torch

from .base import Anchor, WrappedOptimizer, _check_non_negative
from .grads import as_loss_vector, frozen_norm_stats, global_norm, loss_weights


def _unit(grads, radii):
    """Each gradient scaled to its group's radius over the global norm: radius · g/‖g‖."""
    norm = max(global_norm(grads), 1e-12)
    return [g * (radius / norm) for g, radius in zip(grads, radii)]


class GAM(WrappedOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.02, norm_rho: float = 0.2,
                 beta1: float = 1.0, beta2: float = -1.0, beta3: float = 1.0, gamma: float = 0.03,
                 model=None, **base_kwargs):
        _check_non_negative(rho=rho, norm_rho=norm_rho, gamma=gamma)
        settings = dict(rho=rho, norm_rho=norm_rho, beta1=beta1, beta2=beta2, beta3=beta3, grad_gamma=gamma)
        super().__init__(params, base_optimizer, settings, model=model, **base_kwargs)

    def step(self, closure, weights=None):
        params = self._params()
        anchor = Anchor(params)
        rho, norm_rho = self.per_param("rho"), self.per_param("norm_rho")
        beta1, beta2, beta3, gamma = (self.setting(k) for k in ("beta1", "beta2", "beta3", "grad_gamma"))

        def grad_at(offset):
            anchor.move(offset)
            with torch.enable_grad():
                losses = as_loss_vector(closure())
                w = loss_weights(losses, weights)
                return self.combined_gradients(losses, w, params), losses

        zeros = [torch.zeros_like(t) for t in anchor.theta]
        g0, losses = grad_at(zeros)
        with frozen_norm_stats(self.model):
            e0 = _unit(g0, rho)
            g1, _ = grad_at(e0)
            e12 = _unit([a - b for a, b in zip(g1, g0)], norm_rho)
            g2, _ = grad_at(e12)
            e3 = [a + b for a, b in zip(e12, _unit(g2, rho))]
            g3, _ = grad_at(e3)
        anchor.restore()
        with torch.no_grad():
            m = [a + abs(beta2) * b for a, b in zip(g0, g2)]
            u = [beta1 * a + beta3 * b for a, b in zip(g1, g3)]
            norm_m, norm_u = global_norm(m), global_norm(u)
            cos = float(sum((a * b).sum() for a, b in zip(m, u))) / max(norm_m * norm_u, 1e-24)
            final = [b - gamma * (a - cos * norm_m * b / max(norm_u, 1e-12)) for a, b in zip(m, u)]
            for p, g in zip(params, final):
                p.grad = g
        self.base_optimizer.step()
        self.stats = {"loss": float((loss_weights(losses, weights) * losses).sum().detach()),
                      "grad_norm": global_norm(g0), "perturbation_norm": global_norm(e3)}
        return losses.detach()
