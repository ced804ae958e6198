"""App. C of the paper: two domains, an invariant and a spurious feature, a linear model with squared loss.

y ∈ {−1, +1} uniform; x_inv | y ~ N(y·μ_inv, σ²_inv) in both domains; x_spur | y ~ N(y·c_k, σ²_spur) with
c_1 = +μ_spur, c_2 = −μ_spur; μ_inv = 1, σ²_inv = 9, μ_spur = 2, σ²_spur = 0.01 (the paper's values). The
model f(x; θ) = θᵀx with L_k(θ) = ½ E_k[(y − θᵀx)²], whose population form is the quadratic of Eq. 39:
Hessian H_k = E_k[xxᵀ], linear term b_k = E_k[y x] = (μ_inv, c_k), L_k(θ) = ½ − b_kᵀθ + ½ θᵀH_kθ.
``sample`` draws the same distribution, so the two-term estimator can be checked on data too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .terms import Terms, two_terms

MU_INV, VAR_INV, MU_SPUR, VAR_SPUR = 1.0, 9.0, 2.0, 0.01
DOMAINS = (+1.0, -1.0)  # the sign of the spurious mean, c_k = sign · μ_spur


@dataclass(frozen=True)
class Domain:
    sign: float

    @property
    def c(self) -> float:
        return self.sign * MU_SPUR

    def hessian(self) -> torch.Tensor:
        return torch.tensor([[VAR_INV + MU_INV**2, MU_INV * self.c], [MU_INV * self.c, VAR_SPUR + MU_SPUR**2]],
                            dtype=torch.float64)

    def b(self) -> torch.Tensor:
        return torch.tensor([MU_INV, self.c], dtype=torch.float64)

    def population_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Eq. 39: ½ − bᵀθ + ½ θᵀHθ."""
        return 0.5 - self.b() @ theta + 0.5 * theta @ self.hessian() @ theta

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=generator).double() * 2 - 1
        x_inv = y * MU_INV + VAR_INV**0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
        x_spur = y * self.c + VAR_SPUR**0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.stack([x_inv, x_spur], 1), y


def domains() -> list[Domain]:
    return [Domain(s) for s in DOMAINS]


def squared_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((y - x @ theta) ** 2).mean()


def aggregate_hessian() -> torch.Tensor:
    return sum(d.hessian() for d in domains()) / len(DOMAINS)


def optimum() -> torch.Tensor:
    """θ* = H̄⁻¹ b̄, the aggregate (ERM) minimum."""
    return torch.linalg.solve(aggregate_hessian(), sum(d.b() for d in domains()) / len(DOMAINS))


def closed_form() -> dict:
    """Every number App. C states, computed from the constants."""
    H, theta = aggregate_hessian(), optimum()
    grads_at_opt = torch.stack([d.hessian() @ theta - d.b() for d in domains()])
    centred = grads_at_opt - grads_at_opt.mean(0)
    sigma_g = centred.T @ centred / len(DOMAINS)
    return {
        "H_bar": H.tolist(),
        "theta_star": theta.tolist(),
        "domain_optima": [torch.linalg.solve(d.hessian(), d.b()).tolist() for d in domains()],
        "domain_grads_at_0": [(-d.b()).tolist() for d in domains()],
        "Sigma_g": sigma_g.tolist(),
        "curvature_trace": float(torch.trace(H)),
        "alignment_trace": float(torch.trace(torch.linalg.solve(H, sigma_g))),
    }


def population_terms(probes: int = 64, seed: int = 0) -> Terms:
    """The two-term estimator (Hutchinson, CG) on the closed-form population losses at θ*."""
    theta = optimum().clone().requires_grad_(True)
    losses = torch.stack([d.population_loss(theta) for d in domains()])
    return two_terms(losses, [theta], probes=probes, damping=0.0, cg_iters=10, cg_tol=1e-12, power_iters=50, seed=seed)


def sampled_terms(n: int, seed: int, probes: int = 64) -> Terms:
    """The same estimator on n samples per domain (squared loss on data), at θ*."""
    generator = torch.Generator().manual_seed(seed)
    data = [d.sample(n, generator) for d in domains()]
    theta = optimum().clone().requires_grad_(True)
    losses = torch.stack([squared_loss(theta, x, y) for x, y in data])
    return two_terms(losses, [theta], probes=probes, damping=0.0, cg_iters=10, cg_tol=1e-12, power_iters=50, seed=seed)
