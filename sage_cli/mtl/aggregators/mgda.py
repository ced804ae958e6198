"""MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018), solved exactly: TorchJD's Frank–Wolfe stops at a
tolerance, and K is small enough to enumerate the support sets."""

from __future__ import annotations

import itertools
import math

import torch

from .base import GradientAggregator


def min_norm_weights(G: torch.Tensor) -> torch.Tensor:
    """argmin_{w ∈ simplex} wᵀGw, exactly: the best KKT point over every support set (K is small)."""
    K = G.shape[0]
    best, best_value = None, math.inf
    for size in range(1, K + 1):
        for support in itertools.combinations(range(K), size):
            idx = list(support)
            A = torch.zeros(size + 1, size + 1, dtype=G.dtype)
            A[:size, :size] = 2 * G[idx][:, idx]
            A[:size, size] = 1
            A[size, :size] = 1
            b = torch.zeros(size + 1, dtype=G.dtype)
            b[size] = 1
            sol = torch.linalg.lstsq(A, b.unsqueeze(1)).solution.squeeze(1)
            w_s = sol[:size]
            if (w_s < -1e-12).any():
                continue
            w = torch.zeros(K, dtype=G.dtype)
            w[idx] = w_s.clamp_min(0)
            w = w / w.sum()
            value = float(w @ G @ w)
            if value < best_value - 1e-15:
                best, best_value = w, value
    return best


class MGDA(GradientAggregator):
    """MGDA (Désidéri; Sener & Koltun): the min-norm point of the convex hull of the task gradients."""

    def weights(self, gram):
        self.last_weights = min_norm_weights(gram)
        return self.last_weights
