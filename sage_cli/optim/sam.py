"""Sharpness-aware baselines with SAGE's API.

SAM (Foret et al. 2021): ε = ρ ḡ/‖ḡ‖₂ with the global norm over all parameters.
ASAM (Kwon et al. 2021): element-wise adaptive, ε = ρ T²ḡ/‖T ḡ‖₂ with T = |w| + η.
"""

from __future__ import annotations

import torch

from .base import TwoPassOptimizer, _check_non_negative
from .grads import global_norm, grads_of


class SAM(TwoPassOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, model=None, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, model=model, **base_kwargs)

    @torch.no_grad()
    def perturbations(self, params, grads):
        scale = self.rho / max(global_norm(grads), 1e-12)
        return [g * scale for g in grads]


class ASAM(TwoPassOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.5, eta: float = 0.01,
                 model=None, **base_kwargs):
        _check_non_negative(eta=eta)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults={"eta": eta}, **base_kwargs)
        self.eta = eta

    @torch.no_grad()
    def perturbations(self, params, grads):
        scaled = [(p.abs() + self.eta) * g for p, g in zip(params, grads)]
        scale = self.rho / max(global_norm(scaled), 1e-12)
        return [(p.abs() + self.eta) * tg * scale for p, tg in zip(params, scaled)]


def _dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


class GSAM(SAM):
    """GSAM (Zhuang et al. 2022): SAM's ascent; descent along g_h − α·g_⊥, where g_⊥ is the part of the
    clean gradient g orthogonal to the perturbed gradient g_h (minimises the surrogate gap)."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, alpha: float = 0.01,
                 model=None, **base_kwargs):
        _check_non_negative(alpha=alpha)
        super().__init__(params, base_optimizer, rho=rho, model=model, **base_kwargs)
        self.alpha = alpha

    @torch.no_grad()
    def descent_gradient(self, clean, perturbed):
        coef = _dot(clean, perturbed) / _dot(perturbed, perturbed).clamp_min(1e-24)
        return [gh - self.alpha * (g - coef * gh) for g, gh in zip(clean, perturbed)]


class SAGM(TwoPassOptimizer):
    """SAGM (Wang et al. 2023, official code): ascent ε = (ρ/‖g‖ − α)·g; descent along ½(g + g_h), matching
    the clean and perturbed gradients."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, alpha: float = 0.001,
                 model=None, **base_kwargs):
        _check_non_negative(alpha=alpha)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults={"alpha": alpha}, **base_kwargs)
        self.alpha = alpha

    @torch.no_grad()
    def perturbations(self, params, grads):
        scale = self.rho / max(global_norm(grads), 1e-12) - self.alpha
        return [g * scale for g in grads]

    @torch.no_grad()
    def descent_gradient(self, clean, perturbed):
        return [0.5 * (g + gh) for g, gh in zip(clean, perturbed)]


class DISAM(SAM):
    """DISAM (Zhang et al. 2024): the ascent direction is the gradient of L̄ − λ·Var_k(L_k), so the
    perturbation is not dominated by the best-fitted domains; descent as SAM."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, variance_weight: float = 0.1,
                 model=None, **base_kwargs):
        _check_non_negative(variance_weight=variance_weight)
        super().__init__(params, base_optimizer, rho=rho, model=model, **base_kwargs)
        self.variance_weight = variance_weight

    def aggregate(self, losses, weights, params):
        mean = (weights * losses).sum()
        variance = ((losses - losses.mean()) ** 2).mean()
        grads = grads_of(mean - self.variance_weight * variance, params)
        return grads, {"domain_loss_variance": float(variance.detach())}
