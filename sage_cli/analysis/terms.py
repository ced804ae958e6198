"""The two leading terms of the paper's Theorem 1 (Eq. 5) at a point θ, for K per-distribution losses:

    excess risk ≈ 1/(2K) · tr(H̄⁻¹Σg)  +  σ²/2 · tr(H̄)
                  alignment term        curvature term

with H̄ the Hessian of the aggregate R = (1/K) Σ_k L_k and Σg = (1/K) Σ_k (g_k − ḡ)(g_k − ḡ)ᵀ the covariance
of the per-distribution gradients g_k = ∇L_k. Σg is a sum of K rank-one terms, so
tr(H̄⁻¹Σg) = (1/K) Σ_k (g_k − ḡ)ᵀ H̄⁻¹ (g_k − ḡ): K conjugate-gradient solves with (H̄ + λI), λ the damping.
tr(H̄) is Hutchinson's estimate. Away from a minimum H̄ is indefinite and CG on it breaks down; the damping is
then raised to 1.5·|λ_min(H̄)| (λ_min by Lanczos), so what is measured is
tr((H̄ + λI)⁻¹Σg) with the λ reported — at a minimum λ_min ≈ 0 and λ stays the one asked for. The traces and
the factors 1/(2K), σ²/2 are reported apart: σ (the
parameter noise of Eq. 5) is the caller's, the traces are the model's. Alongside, for comparison with what
SAM and SAGE act on: the agreement S (mean pairwise cosine of the g_k, SAGE's signal) and λ_max(H̄) (power
iteration; SAM's implicit target).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..optim.grads import mean_pairwise_cosine
from .hessian import HessianOperator, conjugate_gradient, hutchinson_trace, lanczos_extremes, power_iteration


@dataclass
class Terms:
    K: int
    n_params: int
    curvature_trace: float
    curvature_stderr: float
    probes: int
    alignment_trace: float
    damping: float  # the λ used: the one asked for, or 1.5·|λ_min| where H̄ has negative curvature
    cg_iterations: int  # the most any of the K solves took
    cg_residual: float  # the largest final relative residual of the K solves
    cg_negative_curvature: int  # solves stopped by pᵀ(H̄ + λI)p ≤ 0
    agreement: float
    lambda_max: float
    lambda_min: float
    sigma: float
    hessian_products: int

    @property
    def alignment_factor(self) -> float:
        return 1.0 / (2 * self.K)

    @property
    def curvature_factor(self) -> float:
        return self.sigma ** 2 / 2

    def to_dict(self) -> dict:
        return {**asdict(self), "alignment_factor": self.alignment_factor, "curvature_factor": self.curvature_factor,
                "alignment_term": self.alignment_factor * self.alignment_trace,
                "curvature_term": self.curvature_factor * self.curvature_trace}


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).detach() for g, p in zip(grads, params)])


def two_terms(losses: torch.Tensor, params: list[torch.Tensor], probes: int = 16, damping: float = 1e-3,
              cg_iters: int = 50, cg_tol: float = 1e-6, power_iters: int = 20, sigma: float = 0.0,
              seed: int = 0, lanczos_iters: int = 30) -> Terms:
    """``losses``: the K per-distribution losses at θ, with their graph to ``params``."""
    K = losses.numel()
    per_dist = [flat_grad(losses[k], params) for k in range(K)]
    mean = torch.stack(per_dist).mean(0)
    hessian = HessianOperator(losses.mean(), params)
    generator = torch.Generator().manual_seed(seed)
    device, dtype = mean.device, mean.dtype
    curvature = hutchinson_trace(hessian, hessian.dim, probes, generator, device, dtype)
    lam_max = power_iteration(hessian, hessian.dim, power_iters, generator, device, dtype)
    lam_min, top = lanczos_extremes(hessian, hessian.dim, lanczos_iters, generator, device, dtype)
    lam_max = max(lam_max, top)  # power iteration gives the largest |λ|; Lanczos' top Ritz value bounds it too
    if lam_min < 0:
        damping = max(damping, 1.5 * -lam_min)
    total, worst, most, negative = 0.0, 0.0, 0, 0
    for g in per_dist:
        d = g - mean
        solve = conjugate_gradient(hessian, d, damping, cg_iters, cg_tol)
        total += float(d @ solve.x)
        worst, most = max(worst, solve.residual), max(most, solve.iterations)
        negative += solve.negative_curvature
    agreement = mean_pairwise_cosine([[g] for g in per_dist]) if K > 1 else 1.0
    return Terms(K, hessian.dim, curvature.value, curvature.stderr, probes, total / K, damping, most, worst, negative,
                 agreement, lam_max, lam_min, sigma, hessian.products)
