"""Fig. 2 of the paper: a 2-D, two-domain landscape with two minima of different gradient agreement.

The aggregate loss L̄ has two wells, A and B, of equal depth. The domains disagree around A and agree
around B: L_{1,2} = L̄ ± h, where h = c·(θ_y − A_y)·exp(−‖θ − A‖²/2w_h²) tilts the two domains apart
near A and vanishes near B, so their mean is L̄ everywhere. At A the two domain gradients are ±c·e_y
(S = −1); at B they coincide (S = 1). ERM, SAM, SGLD (constant noise) and SAGE (agreement-scaled noise,
β = γ(1 − S)) run with ``sage_cli.optim``'s own classes on plain SGD from one start inside A's basin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

A, B = (-0.7, 0.0), (0.7, 0.0)
WIDTH, DEPTH = 0.5, 1.0  # both wells
CONFLICT, CONFLICT_WIDTH = 1.5, 0.5
BOWL = 0.05
START = (-0.3, 0.6)
LR, STEPS, RHO, GAMMA, SGLD_SIGMA = 0.05, 1000, 0.05, 1.5, 1.0

METHODS = {  # label -> (class in sage_cli.optim, settings)
    "ERM": ("SinglePassOptimizer", {}),
    "SAM": ("SAM", {"rho": RHO}),
    f"SGLD (σ={SGLD_SIGMA})": ("SGLD", {"sigma": SGLD_SIGMA}),
    f"SAGE noise (γ={GAMMA})": ("SAGE", {"rho": RHO, "gamma": GAMMA, "bias_rule": "sam"}),
}


def _well(theta, centre, width):
    return torch.exp(-((theta[..., 0] - centre[0]) ** 2 + (theta[..., 1] - centre[1]) ** 2) / (2 * width**2))


def aggregate(theta: torch.Tensor) -> torch.Tensor:
    return (1 - DEPTH * _well(theta, A, WIDTH) - DEPTH * _well(theta, B, WIDTH)
            + BOWL * (theta[..., 0] ** 2 + theta[..., 1] ** 2))


def conflict(theta: torch.Tensor) -> torch.Tensor:
    return CONFLICT * (theta[..., 1] - A[1]) * _well(theta, A, CONFLICT_WIDTH)


def domain_losses(theta: torch.Tensor) -> torch.Tensor:
    """(L_1, L_2) at θ (shape (..., 2) → (..., 2))."""
    base, tilt = aggregate(theta), conflict(theta)
    return torch.stack([base + tilt, base - tilt], -1)


def agreement(theta: torch.Tensor) -> torch.Tensor:
    """S = cos(∇L_1, ∇L_2) at each point of ``theta`` (..., 2); 1 where a gradient vanishes."""
    theta = theta.detach().clone().requires_grad_(True)
    losses = domain_losses(theta)
    # the points are independent, so the gradient of a sum is every point's own gradient
    g1, g2 = (torch.autograd.grad(losses[..., k].sum(), theta, retain_graph=True)[0] for k in range(2))
    denom = g1.norm(dim=-1) * g2.norm(dim=-1)
    return torch.where(denom > 1e-20, (g1 * g2).sum(-1) / denom.clamp_min(1e-20), torch.ones_like(denom))


@dataclass
class Trajectory:
    label: str
    points: list[tuple[float, float]]

    @property
    def end(self) -> tuple[float, float]:
        return self.points[-1]

    def basin(self) -> str:
        x, y = self.end
        dist = {name: math.dist((x, y), c) for name, c in (("A", A), ("B", B))}
        return min(dist, key=dist.get)


def trajectory(label: str, seed: int = 0, steps: int = STEPS) -> Trajectory:
    from .. import optim

    name, settings = METHODS[label]
    theta = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    extra = {"seed": seed} if name in ("SGLD", "SAGE") else {}
    opt = getattr(optim, name)([theta], torch.optim.SGD, lr=LR, **settings, **extra)
    points = [tuple(theta.detach().tolist())]
    for _ in range(steps):
        opt.step(lambda: domain_losses(theta))
        points.append(tuple(theta.detach().tolist()))
    return Trajectory(label, points)


def run(seed: int = 0) -> list[Trajectory]:
    return [trajectory(label, seed) for label in METHODS]


def plane(*fields):
    """The figures' window on the plane: its axes and each field (a function of (..., 2) points) on the grid, as
    NumPy arrays. matplotlib turns tensors into arrays through ``np.array(copy=False)``, which Tensor.__array__
    does not take (a DeprecationWarning in NumPy 2)."""
    xs, ys = torch.linspace(-2.0, 2.0, 161, dtype=torch.float64), torch.linspace(-1.5, 1.5, 121, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)
    return xs.numpy(), ys.numpy(), *(field(grid).numpy() for field in fields)


def figure(trajectories: list[Trajectory]) -> bytes:
    from ..plots import png, pyplot

    plt = pyplot()
    xs, ys, loss, S = plane(aggregate, agreement)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.0))
    shaded = left.contourf(xs, ys, loss, levels=30, cmap="Greys_r")
    fig.colorbar(shaded, ax=left, label="aggregate loss L̄", shrink=0.85)
    agree = right.pcolormesh(xs, ys, S, cmap="RdBu", vmin=-1, vmax=1, shading="auto")
    fig.colorbar(agree, ax=right, label="agreement S(θ)", shrink=0.85)
    # ERM and SAM take nearly the same path: ERM wide and dashed underneath, SAM thin on top, both visible
    styles = {"ERM": dict(color="black", lw=2.6, ls="--", zorder=3), "SAM": dict(color="red", lw=1.0, zorder=4)}
    for ax in (left, right):
        for t in trajectories:
            px, py = zip(*t.points)
            style = styles.get(t.label, dict(color="orange" if t.label.startswith("SGLD") else "blue", lw=1.0,
                                             zorder=2))
            ax.plot(px, py, alpha=0.9, label=f"{t.label} → {t.basin()}", **style)
            ax.plot(*t.end, "o", color=style["color"], ms=4, zorder=5)
        ax.plot(*START, "*", color="gold", ms=12, mec="black", zorder=6)
        for name, c in (("A", A), ("B", B)):
            ax.annotate(name, c, xytext=(c[0] + 0.1, c[1] - 0.35), fontsize=11, weight="bold", zorder=7,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="black", lw=0.6))
        ax.set_xlabel("θ₁")
        ax.set_aspect("equal")
    left.set_ylabel("θ₂")
    left.set_title("aggregate loss L̄ and trajectories", fontsize=9)
    right.set_title("gradient agreement S(θ) (blue +1, red −1)", fontsize=9)
    left.legend(fontsize=7, loc="lower left")
    return png(fig)
