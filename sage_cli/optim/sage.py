"""SAGE: Spectral-Aware Gradient-Aligned Exploration (arXiv 2605.07914, Alg. 1 in App. H).

Ascent: for every parameter with ndim ≥ 2, ε_W = ρ‖W‖_F · polar(G) (G the aggregate gradient, conv kernels
viewed as out × rest); for 1-D parameters the ``bias_rule``. Descent: the gradient at θ+ε plus β·ξ with
β = max(γ(1 − S), 0), S the mean pairwise cosine of the per-distribution gradients, ξ ~ N(0, I) from the
optimizer's own seeded generator (so a run is reproducible and resumable).
"""

from __future__ import annotations

import torch

from .base import TwoPassOptimizer, _check_non_negative
from .grads import mean_pairwise_cosine, per_distribution_grads
from .noise import NoiseSource
from .polar_factor import POLAR_METHODS, polar

BIAS_RULES = ("sam", "scaled", "none")
POLAR_CHOICES = POLAR_METHODS + ("none",)


class SpectralAscent:
    """SAGE's ascent for one parameter: ρ‖W‖_F · polar(G) for matrices, the ``bias_rule`` for 1-D ones.
    Shared by SAGE (one ε from the aggregate gradient) and SAGE-SAMO (one ε per task)."""

    def __init__(self, rho: float, polar: str = "quintic", ns_steps: int = 5, scale_by_weight_norm: bool = True,
                 bias_rule: str = "sam"):
        if polar not in POLAR_CHOICES:
            raise ValueError(f"unknown polar method '{polar}'; choose from {', '.join(POLAR_CHOICES)}")
        if bias_rule not in BIAS_RULES:
            raise ValueError(f"unknown bias_rule '{bias_rule}'; choose from {', '.join(BIAS_RULES)}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        self.rho, self.polar, self.ns_steps = rho, polar, ns_steps
        self.scale_by_weight_norm, self.bias_rule = scale_by_weight_norm, bias_rule

    @torch.no_grad()
    def __call__(self, p: torch.Tensor, g: torch.Tensor, rho: float | None = None) -> torch.Tensor | None:
        """ε for parameter ``p`` from its gradient ``g``; ``rho`` is its group's radius (default: this one's)."""
        rho = self.rho if rho is None else rho
        if p.ndim >= 2:
            radius = rho * p.norm() if self.scale_by_weight_norm else rho
            if self.polar == "none":
                return radius * g / g.norm().clamp_min(1e-12)
            return radius * polar(g, self.polar, self.ns_steps)
        if self.bias_rule == "none":
            return None
        radius = rho * p.norm() if self.bias_rule == "scaled" else rho
        return radius * g / g.norm().clamp_min(1e-12)


class AgreementNoise:
    """SAGE's descent noise: β = max(γ(1 − S), 0) from the agreement S, ξ ~ N(0, I) from a seeded generator.
    γ may differ per parameter group: ``betas(gammas)`` gives each parameter's β."""

    def __init__(self, gamma: float, enabled: bool = True, seed: int | None = None):
        _check_non_negative(gamma=gamma)
        self.gamma, self.enabled = gamma, enabled
        self.source = NoiseSource(seed)
        self.agreement = 1.0

    def scale(self, gamma: float) -> float:
        return max(gamma * (1.0 - self.agreement), 0.0) if self.enabled else 0.0

    def set_agreement(self, agreement: float) -> dict:
        self.agreement = agreement
        return {"agreement": agreement, "noise_scale": self.scale(self.gamma)}

    def betas(self, gammas) -> list[float]:
        return [self.scale(g) for g in gammas]

    def like(self, p: torch.Tensor) -> torch.Tensor:
        return self.source.normal_like(p)


class SAGE(TwoPassOptimizer):
    def __init__(
        self,
        params,
        base_optimizer=torch.optim.Adam,
        rho: float = 1e-6,
        gamma: float = 1e-6,
        polar: str = "quintic",
        ns_steps: int = 5,
        scale_by_weight_norm: bool = True,
        bias_rule: str = "sam",
        noise: bool = True,
        seed: int | None = None,
        model=None,
        **base_kwargs,
    ):
        """
        polar: ``quintic`` (Muon, default), ``cubic`` (Eq. 7), ``svd`` (exact), ``polar_express``, or
            ``none`` for the Fig. 3 "no Newton–Schulz" ablation (ε_W = ρ‖W‖_F · G/‖G‖_F).
        scale_by_weight_norm: False is the "no scaling" ablation (ε_W = ρ · polar(G)).
        bias_rule: 1-D parameters: ``sam`` (ρ g/‖g‖, Alg. 1), ``scaled`` (ρ‖b‖ g/‖g‖, which makes the
            perturbation invariant to rescaling the layer, App. D), ``none`` (left unperturbed).
        noise: False (or γ = 0) is the "no noise" ablation.
        """
        ascent = SpectralAscent(rho, polar, ns_steps, scale_by_weight_norm, bias_rule)
        descent_noise = AgreementNoise(gamma, noise, seed)
        settings = dict(gamma=gamma, polar=polar, ns_steps=ns_steps, scale_by_weight_norm=scale_by_weight_norm,
                        bias_rule=bias_rule, noise=noise)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults=settings, **base_kwargs)
        self.ascent, self.descent_noise = ascent, descent_noise

    # --- ascent ----------------------------------------------------------------------------------
    def aggregate(self, losses, weights, params):
        if losses.numel() == 1:
            grads, agreement = self.combined_gradients(losses, weights, params), 1.0
        else:  # the per-distribution gradients serve both S and the aggregate (SAGE-X: X's aggregate)
            per_dist = per_distribution_grads(losses, params)
            grads = self.combined_gradients(losses, weights, params, per_dist)
            # with task heads (MTL), S is measured on the shared parameters: the heads are disjoint
            shared = self.shared_mask(params)
            agreement = mean_pairwise_cosine([[g for g, s in zip(task, shared) if s] for task in per_dist])
        return grads, self.descent_noise.set_agreement(agreement)

    @torch.no_grad()
    def perturbations(self, params, grads):
        return [self.ascent(p, g, rho) for p, g, rho in zip(params, grads, self.per_param("rho"))]

    # --- descent noise ---------------------------------------------------------------------------
    def descent_noise_scales(self, params) -> list[float]:
        return self.descent_noise.betas(self.per_param("gamma"))

    def noise_like(self, p: torch.Tensor) -> torch.Tensor:
        return self.descent_noise.like(p)

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return self.descent_noise.source.state_dict()

    def _load_extra_state(self, state: dict) -> None:
        self.descent_noise.source.load_state_dict(state)
