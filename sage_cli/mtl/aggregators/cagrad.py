"""CAGrad (Liu et al., NeurIPS 2021), as in the authors' code: TorchJD normalises the Gramian and drops
the 1/(1 + c²) rescaling, so it is solved here."""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import GradientAggregator, setting


def cagrad_weights(G: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    """CAGrad (Liu et al. 2021), as in the reference code, on the Gramian G = JJᵀ (g0 the mean gradient):
    w = argmin_{simplex} wᵀG g0_w + c‖g0‖√(wᵀGw), then d = (g0 + c‖g0‖ g_w/‖g_w‖) / (1 + c²) = Σ_k c_k g_k with
    c = (1/K + λw) / (1 + c²), λ = c‖g0‖/‖g_w‖."""
    from scipy.optimize import minimize

    G = G.detach().cpu().double()
    Gn = G.numpy()
    K = Gn.shape[0]
    g0_norm = math.sqrt(max(Gn.mean(), 0.0))  # ‖g0‖² = 1ᵀG1/K²
    phi = c * g0_norm
    b = Gn.mean(1)  # G·(1/K)

    def objective(w):
        return float(w @ b + phi * math.sqrt(max(w @ Gn @ w, 1e-20)))

    res = minimize(objective, np.ones(K) / K, bounds=[(0, 1)] * K,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},), method="SLSQP",
                   options={"ftol": 1e-12, "maxiter": 500})
    w = torch.as_tensor(res.x, dtype=torch.float64)
    lam = phi / (math.sqrt(max(float(w @ G @ w), 0.0)) + 1e-12)
    return (torch.full((K,), 1.0 / K, dtype=torch.float64) + lam * w) / (1 + c ** 2)


def cagrad_direction(J: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    return cagrad_weights(J @ J.T, c).to(J.dtype) @ J


class CAGrad(GradientAggregator):
    """CAGrad with c = ``cagrad_c`` (0.4, the reference's NYU-v2 setting)."""

    def weights(self, gram):
        return cagrad_weights(gram, float(setting(self.cfg, "cagrad_c")))
