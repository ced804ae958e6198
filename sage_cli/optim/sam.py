"""Sharpness-aware baselines with SAGE's API. ρ (and α, η, λ) are read from each parameter's group.

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
        norm = max(global_norm(grads), 1e-12)
        return [g * (rho / norm) for g, rho in zip(grads, self.per_param("rho"))]


class ASAM(TwoPassOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.5, eta: float = 0.01,
                 model=None, **base_kwargs):
        _check_non_negative(eta=eta)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults={"eta": eta}, **base_kwargs)

    @torch.no_grad()
    def perturbations(self, params, grads):
        etas = self.per_param("eta")
        scaled = [(p.abs() + eta) * g for p, g, eta in zip(params, grads, etas)]
        norm = max(global_norm(scaled), 1e-12)
        return [(p.abs() + eta) * tg * (rho / norm) for p, tg, eta, rho in zip(params, scaled, etas, self.per_param("rho"))]


def _dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


class GSAM(SAM):
    """GSAM (Zhuang et al. 2022): SAM's ascent; descent along g_h − α·g_⊥, where g_⊥ is the part of the
    clean gradient g orthogonal to the perturbed gradient g_h (minimises the surrogate gap)."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, alpha: float = 0.01,
                 model=None, **base_kwargs):
        _check_non_negative(alpha=alpha)
        TwoPassOptimizer.__init__(self, params, base_optimizer, rho=rho, model=model, defaults={"alpha": alpha},
                                  **base_kwargs)

    @torch.no_grad()
    def descent_gradient(self, clean, perturbed):
        coef = _dot(clean, perturbed) / _dot(perturbed, perturbed).clamp_min(1e-24)
        return [gh - alpha * (g - coef * gh) for g, gh, alpha in zip(clean, perturbed, self.per_param("alpha"))]


class SAGM(TwoPassOptimizer):
    """SAGM (Wang et al. 2023, official code): ascent ε = (ρ/‖g‖ − α)·g; descent along ½(g + g_h), matching
    the clean and perturbed gradients."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, alpha: float = 0.001,
                 model=None, **base_kwargs):
        _check_non_negative(alpha=alpha)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults={"alpha": alpha}, **base_kwargs)

    @torch.no_grad()
    def perturbations(self, params, grads):
        norm = max(global_norm(grads), 1e-12)
        return [g * (rho / norm - alpha) for g, rho, alpha in zip(grads, self.per_param("rho"), self.per_param("alpha"))]

    @torch.no_grad()
    def descent_gradient(self, clean, perturbed):
        return [0.5 * (g + gh) for g, gh in zip(clean, perturbed)]


class DISAM(SAM):
    """DISAM (Zhang et al. 2024): the ascent direction is the gradient of L̄ − λ·Var_k(L_k), so the
    perturbation is not dominated by the best-fitted domains; descent as SAM."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, variance_weight: float = 0.1,
                 model=None, **base_kwargs):
        _check_non_negative(variance_weight=variance_weight)
        TwoPassOptimizer.__init__(self, params, base_optimizer, rho=rho, model=model,
                                  defaults={"variance_weight": variance_weight}, **base_kwargs)

    def aggregate(self, losses, weights, params):
        # one objective for all parameters: λ is the loss's, read from the first group
        mean = (weights * losses).sum()
        variance = ((losses - losses.mean()) ** 2).mean()
        grads = grads_of(mean - self.setting("variance_weight") * variance, params)
        return grads, {"domain_loss_variance": variance}
