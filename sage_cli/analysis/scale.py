"""App. D of the paper (Fig. 4): sharpness L(θ+ε) − L(θ) of one function under its rescalings.

The 2 → 64 → 2 ReLU MLP is trained on concentric circles (scikit-learn's ``make_circles``); then
W1, b1 → αW1, αb1 and W2 → W2/α for α ∈ [0.1, 10], which leaves the function unchanged (ReLU is positively
homogeneous), and each method's ε is measured at every α. A scale-invariant measure is flat in α.
SAGE is run with each rule for its 1-D parameters (biases): the fixed radius ``sam`` (its default), the
radius scaled by ‖b‖ (``scaled``), and biases left unperturbed (``none``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

METHODS = {  # label -> (class name in sage_cli.optim, settings); radii as the paper's figure uses them
    "SAM (ρ=0.05)": ("SAM", {"rho": 0.05}),
    "ASAM (ρ=0.5)": ("ASAM", {"rho": 0.5}),
    "SAGE, bias rule sam (default)": ("SAGE", {"rho": 0.05, "gamma": 0.0, "bias_rule": "sam"}),
    "SAGE, bias rule scaled": ("SAGE", {"rho": 0.05, "gamma": 0.0, "bias_rule": "scaled"}),
    "SAGE, bias rule none": ("SAGE", {"rho": 0.05, "gamma": 0.0, "bias_rule": "none"}),
}


def alphas(n: int = 21) -> list[float]:
    return [float(a) for a in torch.logspace(-1, 1, n, dtype=torch.float64)]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 2))


def train_circles(seed: int = 0, steps: int = 300):
    """(X, y, the converged state) — Adam on the full batch until it separates the circles."""
    from sklearn.datasets import make_circles

    torch.manual_seed(seed)
    X, y = make_circles(n_samples=512, noise=0.05, factor=0.5, random_state=seed)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return X, y, {k: v.clone() for k, v in net.state_dict().items()}


def rescaled(state: dict, alpha: float) -> nn.Module:
    net = mlp()
    s = dict(state)
    s["0.weight"], s["0.bias"], s["2.weight"] = state["0.weight"] * alpha, state["0.bias"] * alpha, state["2.weight"] / alpha
    net.load_state_dict(s)
    return net


def sharpness(method: str, net: nn.Module, X, y) -> float:
    from .. import optim

    name, settings = METHODS[method] if method in METHODS else (method, {})
    opt = getattr(optim, name)(net.parameters(), torch.optim.SGD, lr=0.0, **settings)
    return opt.sharpness(lambda: nn.functional.cross_entropy(net(X), y))


@dataclass
class Result:
    alphas: list[float]
    sharpness: dict[str, list[float]]  # method label -> one value per α
    accuracy: float
    max_output_change: float  # max |f_α(X) − f_1(X)| over α: the rescaling keeps the function

    def spread(self, method: str) -> float:
        values = self.sharpness[method]
        return max(values) / min(values)


def run(seed: int = 0, n_alphas: int = 21) -> Result:
    X, y, state = train_circles(seed)
    reference = rescaled(state, 1.0)(X)
    grid = alphas(n_alphas)
    values = {m: [] for m in METHODS}
    change = 0.0
    for alpha in grid:
        net = rescaled(state, alpha)
        with torch.no_grad():
            change = max(change, float((net(X) - reference).abs().max()))
        for m in METHODS:
            values[m].append(sharpness(m, rescaled(state, alpha), X, y))
    accuracy = float((reference.argmax(1) == y).float().mean())
    return Result(grid, values, accuracy, change)


def figure(result: Result) -> bytes:
    from ..plots import png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    styles = ["-", "--", "-", "-.", ":"]
    for (label, values), style in zip(result.sharpness.items(), styles):
        ax.plot(result.alphas, values, style, marker="o", ms=3, label=f"{label}: ×{result.spread(label):.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rescaling α  (W1, b1 → αW1, αb1;  W2 → W2/α: the same function)")
    ax.set_ylabel("sharpness  L(θ+ε) − L(θ)")
    ax.set_title("App. D: sharpness under rescaling (legend: max/min over α)", fontsize=9)
    ax.legend(fontsize=7)
    return png(fig)


def table(result: Result) -> list[list[str]]:
    rows = []
    for label, values in result.sharpness.items():
        at_one = values[min(range(len(result.alphas)), key=lambda i: abs(result.alphas[i] - 1.0))]
        rows.append([label, f"{values[0]:.3g}", f"{at_one:.3g}", f"{values[-1]:.3g}", f"{result.spread(label):.2f}×"])
    return rows
