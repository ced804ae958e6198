"""SAGE: Spectral-Aware Gradient-Aligned Exploration (arXiv 2605.07914, Alg. 1 in App. H).

Ascent: for every parameter with ndim ≥ 2, ε_W = ρ‖W‖_F · polar(G) (G the aggregate gradient, conv kernels
viewed as out × rest); for 1-D parameters the ``bias_rule``. Descent: the gradient at θ+ε plus β·ξ with
β = max(γ(1 − S), 0), S the mean pairwise cosine of the per-distribution gradients, ξ ~ N(0, I) from the
optimizer's own seeded generator (so a run is reproducible and resumable).
"""

from __future__ import annotations

import torch

from .base import TwoPassOptimizer, _check_non_negative
from .grads import gram_matrix, mean_cosine, per_distribution_grads
from .noise import NoiseSource
from .per_domain import PerDomainGradients, current_blocks
from .polar_factor import POLAR_METHODS, polar_many

BIAS_RULES = ("sam", "scaled", "none")
POLAR_CHOICES = POLAR_METHODS + ("none",)


POLAR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SpectralAscent:
    """SAGE's ascent for one parameter: ρ‖W‖_F · polar(G) for matrices, the ``bias_rule`` for 1-D ones.
    Shared by SAGE (one ε from the aggregate gradient) and SAGE-SAMO (one ε per task). ``polar_dtype`` is
    the precision of the Newton–Schulz products (bfloat16 halves their cost where the hardware has bf16
    matmuls; the factor is returned in the gradient's dtype)."""

    def __init__(self, rho: float, polar: str = "quintic", ns_steps: int = 5, scale_by_weight_norm: bool = True,
                 bias_rule: str = "sam", polar_dtype: str = "float32"):
        if polar not in POLAR_CHOICES:
            raise ValueError(f"unknown polar method '{polar}'; choose from {', '.join(POLAR_CHOICES)}")
        if bias_rule not in BIAS_RULES:
            raise ValueError(f"unknown bias_rule '{bias_rule}'; choose from {', '.join(BIAS_RULES)}")
        if polar_dtype not in POLAR_DTYPES:
            raise ValueError(f"unknown polar_dtype '{polar_dtype}'; choose from {', '.join(POLAR_DTYPES)}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        self.rho, self.polar, self.ns_steps = rho, polar, ns_steps
        self.scale_by_weight_norm, self.bias_rule = scale_by_weight_norm, bias_rule
        self.dtype = POLAR_DTYPES[polar_dtype]

    @torch.no_grad()
    def many(self, params, grads, rhos) -> list[torch.Tensor | None]:
        """ε for every parameter from its gradient and its group's radius (None: this one's); the matrices'
        polar factors are computed together (``polar_many``)."""
        rhos = [self.rho if r is None else r for r in rhos]
        eps: list[torch.Tensor | None] = [None] * len(params)
        matrices = [i for i, p in enumerate(params) if p.ndim >= 2]
        if self.polar != "none" and matrices:
            factors = polar_many([grads[i] for i in matrices], self.polar, self.ns_steps, self.dtype)
        else:
            factors = [g / g.norm().clamp_min(1e-12) for g in (grads[i] for i in matrices)]
        for i, q in zip(matrices, factors):
            eps[i] = (rhos[i] * params[i].norm() if self.scale_by_weight_norm else rhos[i]) * q
        if self.bias_rule != "none":
            for i, (p, g) in enumerate(zip(params, grads)):
                if p.ndim < 2:
                    radius = rhos[i] * p.norm() if self.bias_rule == "scaled" else rhos[i]
                    eps[i] = radius * g / g.norm().clamp_min(1e-12)
        return eps


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
        polar_dtype: str = "float32",
        agreement_every: int = 1,
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
        polar_dtype: precision of the Newton–Schulz products (``float32`` or ``bfloat16``).
        agreement_every: S (and β) measured every n-th step, the last β used in between: one backward instead
            of K on the other steps where the per-distribution gradients are not separable (MTL). n = 1 is
            Alg. 1; n > 1 departs from it.
        """
        if agreement_every < 1:
            raise ValueError(f"agreement_every must be >= 1, got {agreement_every}")
        ascent = SpectralAscent(rho, polar, ns_steps, scale_by_weight_norm, bias_rule, polar_dtype)
        descent_noise = AgreementNoise(gamma, noise, seed)
        settings = dict(gamma=gamma, polar=polar, ns_steps=ns_steps, scale_by_weight_norm=scale_by_weight_norm,
                        bias_rule=bias_rule, noise=noise)
        super().__init__(params, base_optimizer, rho=rho, model=model, defaults=settings, **base_kwargs)
        self.ascent, self.descent_noise = ascent, descent_noise
        self.agreement_every, self.agreement_steps = agreement_every, 0
        self.per_domain = PerDomainGradients(model)
        self._measured = None

    # --- ascent ----------------------------------------------------------------------------------
    def _agreement_due(self) -> bool:
        return self.agreement_steps % self.agreement_every == 0

    def first_forward(self, closure, weights=None):
        """DG: ḡ and the Gramian from one backward where the losses are per-block means (``per_domain``)."""
        blocks = current_blocks()
        if self.aggregator is not None or blocks is None or len(blocks) < 2 or not self._agreement_due():
            return closure()
        losses, grads, gram = self.per_domain.measure(closure, weights, self._params())
        self._measured = (grads, gram)
        return losses

    def aggregate(self, losses, weights, params):
        measured, self._measured = self._measured, None
        if losses.numel() == 1:
            return self.combined_gradients(losses, weights, params), self.descent_noise.set_agreement(1.0)
        due = self._agreement_due()
        self.agreement_steps += 1
        if measured is not None:
            grads, gram = measured
        elif due or getattr(self.aggregator, "needs_jacobian", False):
            # the per-distribution gradients serve both S and the aggregate (SAGE-X: X's aggregate)
            per_dist = per_distribution_grads(losses, params)
            self.per_domain.path = "exact"
            # with task heads (MTL), S is measured on the shared parameters: the heads are disjoint; the same
            # Gramian serves the Gramian-based aggregators (MGDA, PCGrad, …), in float64 as they solve on it
            shared = self.shared_mask(params)
            gram = gram_matrix([[g for g, s in zip(task, shared) if s] for task in per_dist],
                               torch.float64 if self.aggregator is not None else torch.float32)
            grads = self.combined_gradients(losses, weights, params, per_dist, gram)
        else:  # agreement_every: the last refresh's S and β
            grads = self.combined_gradients(losses, weights, params)
            return grads, self.descent_noise.set_agreement(self.descent_noise.agreement)
        return grads, self.descent_noise.set_agreement(mean_cosine(gram))

    @torch.no_grad()
    def perturbations(self, params, grads):
        return self.ascent.many(params, grads, self.per_param("rho"))

    # --- descent noise ---------------------------------------------------------------------------
    def descent_noise_scales(self, params) -> list[float]:
        return self.descent_noise.betas(self.per_param("gamma"))

    def noise_like(self, p: torch.Tensor) -> torch.Tensor:
        return self.descent_noise.like(p)

    # --- state -----------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        state = self.descent_noise.source.state_dict()
        if self.agreement_every > 1:  # the cached S is part of the trajectory
            state.update(agreement_steps=self.agreement_steps, agreement=self.descent_noise.agreement)
        return state

    def _load_extra_state(self, state: dict) -> None:
        self.descent_noise.source.load_state_dict(state)
        self.agreement_steps = int(state.get("agreement_steps", 0))
        self.descent_noise.agreement = float(state.get("agreement", 1.0))
