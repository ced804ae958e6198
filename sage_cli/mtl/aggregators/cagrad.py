"""CAGrad (Liu et al., NeurIPS 2021), as in the authors' code: TorchJD normalises the Gramian and drops
the 1/(1 + c²) rescaling, so it is solved here."""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import GradientAggregator, setting


def cagrad_direction(J: torch.Tensor, c: float = 0.4) -> torch.Tensor:
    """CAGrad (Liu et al. 2021), as in the reference code: w = argmin_{simplex} wᵀG g0_w + c‖g0‖√(wᵀGw) on
    the Gramian G = JJᵀ (g0 the mean gradient), then d = (g0 + c‖g0‖ g_w/‖g_w‖) / (1 + c²)."""
    from scipy.optimize import minimize

    G = (J @ J.T).cpu().numpy().astype(np.float64)
    K = G.shape[0]
    g0_norm = math.sqrt(max(G.mean(), 0.0))  # ‖g0‖² = 1ᵀG1/K²
    phi = c * g0_norm
    b = G.mean(1)  # G·(1/K)

    def objective(w):
        return float(w @ b + phi * math.sqrt(max(w @ G @ w, 1e-20)))

    res = minimize(objective, np.ones(K) / K, bounds=[(0, 1)] * K,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},), method="SLSQP",
                   options={"ftol": 1e-12, "maxiter": 500})
    w = torch.as_tensor(res.x, dtype=J.dtype)
    gw = w @ J
    g0 = J.mean(0)
    lam = phi / (gw.norm() + 1e-12)
    return (g0 + lam * gw) / (1 + c ** 2)


class CAGrad(GradientAggregator):
    """CAGrad with c = ``cagrad_c`` (0.4, the reference's NYU-v2 setting)."""

    def combine(self, J, losses=None):
        return cagrad_direction(J, float(setting(self.cfg, "cagrad_c")))
