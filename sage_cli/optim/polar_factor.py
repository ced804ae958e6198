"""Orthogonal polar factor Q = U Vᵀ of a gradient G = U Σ Vᵀ (SAGE Sec. 3.1).

Every method works on tensors with ndim ≥ 2, viewed as (out × rest) like a conv kernel, and returns a
tensor of the input's shape. The iterations act on each singular value independently, so
``iterate_singular_values`` is exposed for tests that pin the polynomial maps: with 5 steps from
X0 = G/‖G‖_F, Muon's quintic (KellerJordan/Muon) leaves singular values well away from 1 (the tests pin
six of them), and the cubic of Eq. 7 leaves the small ones near 0.
"""

from __future__ import annotations

import torch

# Muon's quintic (Keller Jordan): p(x) = a x + b x³ + c x⁵, tuned for speed rather than convergence;
# singular values end in roughly [0.7, 1.2]. Alg. 1's "NewtonSchulz5 / Muon logic".
QUINTIC = (3.4445, -4.7750, 2.0315)

# Polar Express (Amsel et al., arXiv 2505.16932, Alg. 1): one optimal quintic per step; all but the last
# are divided by a 1.01 safety factor, and the input is normalised by 1.01·‖G‖_F.
_POLAR_EXPRESS_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),  # later steps repeat this one
]
POLAR_EXPRESS = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]] + [
    _POLAR_EXPRESS_RAW[-1]
]

POLAR_METHODS = ("quintic", "cubic", "svd", "polar_express")


def _quintic_step(X: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    A = X @ X.mT
    return a * X + (b * A + c * (A @ A)) @ X


def _cubic_step(X: torch.Tensor) -> torch.Tensor:
    # Eq. 7 of the paper: X ← ½ X (3I − XᵀX), written as 1.5 X − 0.5 (X Xᵀ) X for the short side.
    return 1.5 * X - 0.5 * (X @ X.mT) @ X


def _iterate(X: torch.Tensor, method: str, steps: int) -> torch.Tensor:
    if method == "quintic":
        for _ in range(steps):
            X = _quintic_step(X, *QUINTIC)
    elif method == "cubic":
        for _ in range(steps):
            X = _cubic_step(X)
    elif method == "polar_express":
        for i in range(steps):
            X = _quintic_step(X, *POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)])
    else:
        raise ValueError(f"unknown polar method '{method}'; choose from {', '.join(POLAR_METHODS)}")
    return X


def iterate_singular_values(sigma: torch.Tensor, method: str, steps: int = 5) -> torch.Tensor:
    """Where each singular value σ0 of an already-normalised X0 ends after ``steps`` iterations."""
    X = torch.diag(sigma.to(torch.float64))
    return torch.diagonal(_iterate(X, method, steps))


def _svd_polar(X: torch.Tensor) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    # Q = Σ_{i ≤ rank} u_i v_iᵀ: directions with a zero singular value carry no gradient and stay zero.
    keep = S > S.max() * max(X.shape) * torch.finfo(X.dtype).eps
    return (U * keep.to(X.dtype)) @ Vh


def polar(
    G: torch.Tensor, method: str = "quintic", steps: int = 5, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Approximate the orthogonal polar factor of ``G`` (ndim ≥ 2), returned in G's shape and dtype."""
    if G.ndim < 2:
        raise ValueError(f"polar needs a tensor with ndim >= 2, got shape {tuple(G.shape)}")
    if method not in POLAR_METHODS:
        raise ValueError(f"unknown polar method '{method}'; choose from {', '.join(POLAR_METHODS)}")
    X = G.reshape(G.shape[0], -1).to(dtype)
    transposed = X.shape[0] > X.shape[1]
    if transposed:  # iterate on the short side: X Xᵀ is then the small Gram matrix
        X = X.mT
    if method == "svd":
        X = _svd_polar(X)
    else:
        norm = X.norm()
        if method == "polar_express":
            norm = norm * 1.01
        X = _iterate(X / (norm + 1e-7), method, steps)
    if transposed:
        X = X.mT
    return X.reshape(G.shape).to(G.dtype)
