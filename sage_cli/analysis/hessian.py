"""Curvature from Hessian-vector products (double backward): Hutchinson's trace estimator, power
iteration, and conjugate gradient for (H + λI)⁻¹v.

Hutchinson (1989): tr(H) = E[zᵀHz] for Rademacher z (E[zzᵀ] = I); the estimate is the mean over M probes,
its standard error the probes' standard deviation over √M. CG (Hestenes & Stiefel 1952) needs H + λI
positive definite; at a point where H has negative eigenvalues larger than λ it meets pᵀ(H + λI)p ≤ 0 and
stops, which is reported (``negative_curvature``) with the residual reached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


class HessianOperator:
    """v ↦ H v for the Hessian of ``loss`` with respect to ``params`` (flat vectors), from one retained
    gradient graph: each product is one backward through it."""

    def __init__(self, loss: torch.Tensor, params: list[torch.Tensor]):
        self.params = params
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        self.grad = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, params)])
        self.dim = self.grad.numel()
        self.products = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        hv = torch.autograd.grad(self.grad, self.params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1).detach()
                          for h, p in zip(hv, self.params)])


@dataclass
class Estimate:
    value: float
    stderr: float
    samples: int


def hutchinson_trace(matvec: Matvec, dim: int, probes: int, generator: torch.Generator,
                     device=None, dtype=torch.float32) -> Estimate:
    values = []
    for _ in range(probes):
        z = torch.randint(0, 2, (dim,), generator=generator).to(device=device, dtype=dtype) * 2 - 1
        values.append(float(z @ matvec(z)))
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else float("nan")
    return Estimate(mean, math.sqrt(var / len(values)) if len(values) > 1 else float("nan"), len(values))


def power_iteration(matvec: Matvec, dim: int, iters: int, generator: torch.Generator,
                    device=None, dtype=torch.float32) -> float:
    """The eigenvalue of largest magnitude (the Rayleigh quotient after ``iters`` products)."""
    v = torch.randn(dim, generator=generator).to(device=device, dtype=dtype)
    v /= v.norm()
    value = 0.0
    for _ in range(iters):
        w = matvec(v)
        value = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return value


def lanczos_extremes(matvec: Matvec, dim: int, iters: int, generator: torch.Generator,
                     device=None, dtype=torch.float32) -> tuple[float, float]:
    """(smallest, largest) Ritz values after ``iters`` Lanczos steps (Lanczos 1950), with full
    reorthogonalisation: the ends of the spectrum, found far sooner than by power iteration."""
    q = torch.randn(dim, generator=generator).to(device=device, dtype=dtype)
    basis = [q / q.norm()]
    alphas, betas = [], []
    for j in range(min(iters, dim)):
        w = matvec(basis[j])
        alphas.append(float(basis[j] @ w))
        for v in basis:  # full reorthogonalisation (twice is enough)
            w -= (v @ w) * v
        for v in basis:
            w -= (v @ w) * v
        beta = float(w.norm())
        if beta < 1e-10 or j == min(iters, dim) - 1:
            break
        betas.append(beta)
        basis.append(w / beta)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(T)
    return float(ritz[0]), float(ritz[-1])


@dataclass
class Solve:
    x: torch.Tensor
    iterations: int
    residual: float  # ‖b − (H + λI)x‖ / ‖b‖, from one more product
    negative_curvature: bool


def conjugate_gradient(matvec: Matvec, b: torch.Tensor, damping: float = 0.0, max_iters: int = 100,
                       tol: float = 1e-8) -> Solve:
    """x ≈ (H + λI)⁻¹ b, from x₀ = 0. Where H + λI is not positive definite the iteration stops at the first
    direction of non-positive curvature (Steihaug's truncation) and returns the iterate of smallest residual."""
    def a(v):
        return matvec(v) + damping * v

    x = torch.zeros_like(b)
    r, b_norm = b.clone(), float(b.norm())
    if b_norm == 0:
        return Solve(x, 0, 0.0, False)
    p, rr = r.clone(), float(r @ r)
    best, best_rr = x.clone(), rr
    negative, it = False, 0
    for it in range(1, max_iters + 1):
        ap = a(p)
        pap = float(p @ ap)
        if pap <= 0:
            negative, it = True, it - 1
            break
        alpha = rr / pap
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        if rr_new < best_rr:
            best, best_rr = x.clone(), rr_new
        if math.sqrt(rr_new) <= tol * b_norm:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    residual = float((b - a(best)).norm()) / b_norm
    return Solve(best, it, residual, negative)
