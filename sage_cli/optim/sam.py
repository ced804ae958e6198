"""Sharpness-aware baselines with SAGE's API.

SAM (Foret et al. 2021): ε = ρ ḡ/‖ḡ‖₂ with the global norm over all parameters.
ASAM (Kwon et al. 2021): element-wise adaptive, ε = ρ T²ḡ/‖T ḡ‖₂ with T = |w| + η.
"""

from __future__ import annotations

import torch

from .base import TwoPassOptimizer, _check_non_negative
from .grads import global_norm


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
