"""BOA, the Billiard Optimization Algorithm (A. Li, L. Zhuang, X. Long, H. Li, S. Wang, "Exploring mode
connectivity in Krylov subspace for domain generalization", ICLR 2026, OpenReview fpH2GYXJwD), built from its
published description: its authors released no code.

From a trained start θ₀, BOA explores the table T = {θ : ℓ(θ) ≤ ℓ_th}, ℓ_th = ℓ(θ₀) + Δℓ, inside the Krylov
subspace K = span{g₀, Hg₀, …, H^{k−1}g₀} (g₀ = ∇ℓ(θ₀), H the Hessian at θ₀): from the direction
p₀ = −Σ_j H^j g₀ (normalised), a line search finds the boundary point along p, where the direction is reflected
about the normal's projection onto K, ñ: p ← (I − 2ññᵀ)p; R reflections give R boundary points, each a
candidate model that model selection chooses between.

sage's choices where the description leaves them open are ``BoaSettings`` fields (``settings/methods.py``), each
with its default: Δℓ, k, the Hessian-vector products (exact double backward, or the description's finite
differences with step ε), the line search's first step h and tolerance, R. The basis is Arnoldi's (orthonormal,
the same span as the raw powers); the raw powers in p₀ are read off its Hessenberg matrix
(Hʲg₀ = ‖g₀‖ Q H_kʲ e₁ for j < k), so no power is formed in floating point. Vectors are flat (``torch.Tensor``
of all trainable parameters); everything runs in float64 on small problems and in the parameters' dtype else.

Not for: training from scratch (BOA needs a trained start) or anything but exploring the start's sublevel set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Loss = Callable[[torch.Tensor], float]  # θ ↦ ℓ(θ)
Grad = Callable[[torch.Tensor], torch.Tensor]  # θ ↦ ∇ℓ(θ)
Hvp = Callable[[torch.Tensor], torch.Tensor]  # v ↦ H v at θ₀

GOLDEN = (math.sqrt(5) - 1) / 2  # 0.618…


def finite_difference_hvp(grad: Grad, theta0: torch.Tensor, g0: torch.Tensor, eps: float) -> Hvp:
    """Hv ≈ (∇ℓ(θ₀ + εv/‖v‖) − ∇ℓ(θ₀)) ‖v‖ / ε: the description's forward difference, taken along the unit
    vector so that ε is a distance in parameter space whatever ‖v‖ is. Its error is O(ε)."""

    def hvp(v: torch.Tensor) -> torch.Tensor:
        norm = v.norm()
        if norm == 0:
            return torch.zeros_like(v)
        return (grad(theta0 + eps * v / norm) - g0) * (norm / eps)

    return hvp


@dataclass
class Krylov:
    basis: torch.Tensor  # (n, m) orthonormal columns, m ≤ k (fewer when g₀'s orbit spans less)
    direction: torch.Tensor  # p₀, unit norm, in the span
    products: int  # Hessian-vector products taken


def krylov(g0: torch.Tensor, hvp: Hvp, k: int, tol: float = 1e-10) -> Krylov:
    """Arnoldi's orthonormal basis of span{g₀, …, H^{k−1}g₀} (modified Gram–Schmidt, twice), and
    p₀ = −Σ_{j<m} Hʲg₀, normalised, from the Hessenberg matrix. Stops early when the next vector is
    (numerically) in the span already: the orbit of g₀ then has dimension m < k."""
    norm = g0.norm()
    if norm == 0:
        raise ValueError("the gradient at the start is zero: the Krylov subspace is empty")
    q = [g0 / norm]
    hess = torch.zeros(k + 1, k, dtype=g0.dtype, device=g0.device)
    products = 0
    for j in range(k):
        w = hvp(q[j])
        products += 1
        scale = w.norm()
        for _ in range(2):  # re-orthogonalise: one pass loses orthogonality when H is ill-conditioned
            for i, qi in enumerate(q):
                c = qi @ w
                hess[i, j] += c
                w = w - c * qi
        hess[j + 1, j] = w.norm()
        if j + 1 == k or hess[j + 1, j] <= tol * max(float(scale), 1.0):
            break
        q.append(w / hess[j + 1, j])
    m = len(q)
    small = hess[:m, :m].double()  # Hʲ grows like λ_maxʲ: 700⁹ squared overflows float32
    e = torch.zeros(m, dtype=torch.float64, device=g0.device)
    e[0] = 1
    power, total = e, e.clone()
    for _ in range(1, m):  # Σ_{j<m} H_mʲ e₁: the raw powers' coordinates, up to ‖g₀‖
        power = small @ power
        total = total + power
    basis = torch.stack(q, 1)
    direction = -(basis @ (total / total.norm()).to(basis.dtype))  # Q has orthonormal columns: unit norm
    return Krylov(basis, direction / direction.norm(), products)


@dataclass
class Boundary:
    alpha: float  # the step along p to the boundary point
    loss: float  # ℓ there (≤ ℓ_th, within the tolerance of it)
    evaluations: int
    bounded: bool  # False: ℓ stayed under ℓ_th up to ``max_alpha`` (the table is open that way)


def line_search(loss: Loss, theta: torch.Tensor, p: torch.Tensor, threshold: float, step: float, tol: float,
                max_alpha: float = 1e6, max_evals: int = 200) -> Boundary:
    """The step α along ``p`` at which ℓ(θ + αp) = ``threshold``, from inside (ℓ(θ) ≤ threshold), by forward
    passes only: growing steps while inside (increments h, h, 3h, 5h, …: h_{j+1} = (2j − 1)h), halving the first
    step while it lands outside, then golden-section sectioning of the bracket [inside, outside]. It returns the
    inside end, so ℓ ≤ threshold always holds there, once threshold − ℓ ≤ ``tol``."""
    evals = 0

    def f(a: float) -> float:
        nonlocal evals
        evals += 1
        return loss(theta + a * p) - threshold

    lo, f_lo = 0.0, min(f(0.0), 0.0)  # a boundary point found before is inside within rounding
    hi, j = step, 1
    f_hi = f(hi)
    while f_hi <= 0:  # inside: grow
        if -f_hi <= tol:
            return Boundary(hi, threshold + f_hi, evals, True)
        lo, f_lo = hi, f_hi
        hi, j = lo + (2 * j - 1) * step, j + 1  # h_{j+1} = (2j − 1)h: increments h, h, 3h, 5h, …
        if hi > max_alpha or evals >= max_evals:
            return Boundary(lo, threshold + f_lo, evals, False)
        f_hi = f(hi)
    if lo == 0.0:  # the first step overshot: halve it until it lands inside
        while f_hi > 0 and evals < max_evals and hi > 1e-12 * step:
            inside = f(hi / 2)
            if inside <= 0:
                lo, f_lo = hi / 2, inside
                break
            hi, f_hi = hi / 2, inside
    while -f_lo > tol and evals < max_evals:  # golden-section sectioning of [lo (inside), hi (outside)]
        c = hi - GOLDEN * (hi - lo)
        f_c = f(c)
        if f_c <= 0:
            lo, f_lo = c, f_c
        else:
            hi = c
        if hi - lo <= 1e-15 * max(hi, 1.0):
            break
    return Boundary(lo, threshold + f_lo, evals, True)


def reflect(p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """(I − 2ññᵀ)p for a unit ñ: p mirrored about the hyperplane orthogonal to ñ (‖p‖ kept)."""
    return p - 2 * (normal @ p) * normal


def projected_normal(grad: torch.Tensor, basis: torch.Tensor) -> torch.Tensor | None:
    """ñ: the inward normal −∇ℓ/‖∇ℓ‖ projected onto the subspace and normalised (None where it has no part
    there: the reflection is then the identity)."""
    n = -grad / grad.norm()
    tilde = basis @ (basis.T @ n)
    norm = tilde.norm()
    return tilde / norm if norm > 0 else None


@dataclass
class Point:
    index: int  # reflection number, 1…R
    theta: torch.Tensor
    loss: float
    alpha: float
    bounded: bool


class Billiard:
    """The trajectory: ``start`` once at θ₀, then ``next`` per reflection. Its state (θ, p, the basis, ℓ_th) is
    ``state_dict``, so a trajectory resumes where it stopped."""

    def __init__(self, loss: Loss, grad: Grad, *, delta_loss: float, step: float, tol: float):
        self.loss, self.grad = loss, grad
        self.delta_loss, self.step, self.tol = delta_loss, step, tol
        self.theta: torch.Tensor | None = None
        self.p: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None
        self.threshold = math.nan
        self.done = 0

    def start(self, theta0: torch.Tensor, hvp: Hvp, k: int) -> Krylov:
        subspace = krylov(self.grad(theta0), hvp, k)
        self.theta, self.p, self.basis = theta0.clone(), subspace.direction, subspace.basis
        self.threshold = self.loss(theta0) + self.delta_loss
        return subspace

    def next(self) -> Point:
        hit = line_search(self.loss, self.theta, self.p, self.threshold, self.step, self.tol)
        self.theta = self.theta + hit.alpha * self.p
        self.done += 1
        normal = projected_normal(self.grad(self.theta), self.basis) if hit.bounded else None
        if normal is not None:
            self.p = reflect(self.p, normal)
        elif not hit.bounded:  # no wall that way: come back along the same line
            self.p = -self.p
        return Point(self.done, self.theta.clone(), hit.loss, hit.alpha, hit.bounded)

    def state_dict(self) -> dict:
        return {"theta": self.theta, "p": self.p, "basis": self.basis, "threshold": self.threshold,
                "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.theta, self.p, self.basis = state["theta"], state["p"], state["basis"]
        self.threshold, self.done = float(state["threshold"]), int(state["done"])
