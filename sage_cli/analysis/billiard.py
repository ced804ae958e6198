"""BOA on Fig. 2's landscape (``landscape.py``): the sublevel set {L̄ ≤ L̄(θ₀) + Δℓ} around where SAM ends in
well A, explored by ``optim.boa.Billiard`` with exact Hessian-vector products; in 2-D the Krylov subspace
(k = 2) is the whole plane, so the picture shows the line search and the reflections themselves."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..optim.boa import Billiard
from . import landscape

DELTA, REFLECTIONS, STEP, TOL = 0.3, 40, 0.05, 1e-6


@dataclass
class Exploration:
    start: tuple[float, float]
    threshold: float
    points: list[tuple[float, float]]
    losses: list[float]


def _grad(theta: torch.Tensor) -> torch.Tensor:
    theta = theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(landscape.aggregate(theta), theta)[0]


def run(delta: float = DELTA, reflections: int = REFLECTIONS, seed: int = 0) -> Exploration:
    start = torch.tensor(landscape.trajectory("SAM", seed).end, dtype=torch.float64)
    billiard = Billiard(lambda t: float(landscape.aggregate(t)), _grad, delta_loss=delta, step=STEP, tol=TOL)
    billiard.start(start, lambda v: torch.autograd.functional.hvp(landscape.aggregate, start, v)[1], k=2)
    hits = [billiard.next() for _ in range(reflections)]
    return Exploration(tuple(start.tolist()), billiard.threshold, [tuple(h.theta.tolist()) for h in hits],
                       [h.loss for h in hits])


def figure(found: Exploration) -> bytes:
    from ..plots import png, pyplot

    plt = pyplot()
    xs, ys, loss = landscape.plane(landscape.aggregate)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    shaded = ax.contourf(xs, ys, loss, levels=30, cmap="Greys_r")
    fig.colorbar(shaded, ax=ax, label="aggregate loss L̄", shrink=0.85)
    ax.contour(xs, ys, loss, levels=[found.threshold], colors="tab:orange", linewidths=1.4)
    px, py = zip(found.start, *found.points)
    ax.plot(px, py, color="tab:blue", lw=1.0, zorder=3, label=f"BOA: {len(found.points)} reflections")
    ax.plot(px[1:], py[1:], "o", color="tab:blue", ms=3, zorder=4)
    ax.plot(*found.start, "*", color="gold", ms=13, mec="black", zorder=5, label="θ₀: where SAM ends")
    ax.plot([], [], color="tab:orange", label=f"the table's wall, L̄ = L̄(θ₀) + {found.threshold - float(landscape.aggregate(torch.tensor(found.start, dtype=torch.float64))):.2f}")
    ax.set_xlabel("θ₁")
    ax.set_ylabel("θ₂")
    ax.set_aspect("equal")
    ax.set_title("BOA's billiard on Fig. 2's landscape (k = 2: the whole plane)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return png(fig)
