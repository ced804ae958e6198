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
GRAM_MAX_STEPS = 12  # beyond this many steps, the direct order only (see ``_iterate``)

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


def _coefficients(method: str, steps: int) -> list[tuple[float, float, float]]:
    """(a, b, c) of each step's map X ← (aI + bA + cA²) X, A = X Xᵀ."""
    if method == "quintic":
        return [QUINTIC] * steps
    if method == "cubic":  # Eq. 7 of the paper: X ← ½ X (3I − XᵀX), as 1.5 X − 0.5 (X Xᵀ) X on the short side
        return [(1.5, -0.5, 0.0)] * steps
    if method == "polar_express":
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
    raise ValueError(f"unknown polar method '{method}'; choose from {', '.join(POLAR_METHODS)}")


def _poly(A: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    P = b * A + c * (A @ A) if c else b * A
    return P + a * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _iterate_direct(X: torch.Tensor, coeffs) -> torch.Tensor:
    for a, b, c in coeffs:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X if c else a * X + (b * A) @ X
    return X


def _iterate_gram(X: torch.Tensor, coeffs) -> torch.Tensor:
    """The same iterates through the m × m Gram matrix only: with P_k = a + bA_k + cA_k², X_{k+1} = P_k X_k and
    A_{k+1} = P_k A_k P_k (P_k is a polynomial in A_k), so X_T = (P_{T−1} ⋯ P_0) X_0 with one product by the
    m × n matrix at each end instead of two per step — fewer FLOPs when n is several times m."""
    A = X @ X.mT
    Q = None
    for k, (a, b, c) in enumerate(coeffs):
        P = _poly(A, a, b, c)
        Q = P if Q is None else P @ Q
        if k < len(coeffs) - 1:
            A = P @ A @ P
    return Q @ X


def _iterate(X: torch.Tensor, method: str, steps: int, order: str = "auto") -> torch.Tensor:
    """``steps`` iterations on X (…, m, n), m ≤ n, in whichever of two exact-arithmetic-equal orders costs
    fewer FLOPs (``order`` auto): direct, 2 products with X per step (4m²n + 2m³), or through the Gram matrix
    (4m²n once, 8m³ per step)."""
    coeffs = _coefficients(method, steps)
    m, n = X.shape[-2], X.shape[-1]
    direct = steps * (4 * m * m * n + 2 * m**3)
    gram = 4 * m * m * n + steps * 8 * m**3
    # the Gram order's product P_{T−1}⋯P_0 grows like a^T along directions whose singular value is still far
    # below 1 (a near-zero gradient): 3.4445^T is 3e6 at T = 12 and passes float32's 3e38 at T ≈ 71 (ns_steps
    # 100 made the loss NaN at step 5). The direct order keeps every iterate bounded (σ ≤ 1.14) for any T.
    if order == "gram" or (order == "auto" and gram < 0.8 * direct and steps <= GRAM_MAX_STEPS):
        return _iterate_gram(X, coeffs)
    return _iterate_direct(X, coeffs)


def iterate_singular_values(sigma: torch.Tensor, method: str, steps: int = 5) -> torch.Tensor:
    """Where each singular value σ0 of an already-normalised X0 ends after ``steps`` iterations."""
    X = torch.diag(sigma.to(torch.float64))
    return torch.diagonal(_iterate(X, method, steps))


def _svd_polar(X: torch.Tensor) -> torch.Tensor:
    dtype = X.dtype
    X = X.float() if dtype in (torch.bfloat16, torch.float16) else X  # the exact reference stays in float32
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    # Q = Σ_{i ≤ rank} u_i v_iᵀ: directions with a zero singular value carry no gradient and stay zero.
    keep = S > S.amax(-1, keepdim=True) * max(X.shape[-2:]) * torch.finfo(X.dtype).eps
    return ((U * keep.unsqueeze(-2).to(X.dtype)) @ Vh).to(dtype)


def _as_short_side(G: torch.Tensor, dtype) -> tuple[torch.Tensor, bool]:
    X = G.reshape(G.shape[0], -1).to(dtype)
    transposed = X.shape[0] > X.shape[1]
    # iterate on the short side: X Xᵀ is then the small Gram matrix
    return (X.mT if transposed else X), transposed


def _polar_stack(X: torch.Tensor, method: str, steps: int, order: str = "auto") -> torch.Tensor:
    """The polar factor of every matrix of a (B, m, n) stack, m ≤ n, each normalised by its own norm."""
    if method == "svd":
        return _svd_polar(X)
    norm = torch.linalg.matrix_norm(X, keepdim=True)
    if method == "polar_express":
        norm = norm * 1.01
    if order == "auto" and X.dtype in (torch.bfloat16, torch.float16):
        order = "direct"  # the Gram matrix squares the condition number: too much for 8 mantissa bits
    return _iterate(X / (norm + 1e-7), method, steps, order)


def polar_many(grads: list[torch.Tensor], method: str = "quintic", steps: int = 5,
               dtype: torch.dtype = torch.float32, order: str = "auto") -> list[torch.Tensor]:
    """The polar factor of each tensor (ndim ≥ 2), matrices of one shape iterated together as one batched
    matmul chain: a ResNet's or a ViT's many same-shape layers then cost a few large products, not many small
    ones. Each is returned in its own shape and dtype. ``order``: ``auto``, ``direct`` or ``gram`` (``_iterate``)."""
    if method not in POLAR_METHODS:
        raise ValueError(f"unknown polar method '{method}'; choose from {', '.join(POLAR_METHODS)}")
    for G in grads:
        if G.ndim < 2:
            raise ValueError(f"polar needs a tensor with ndim >= 2, got shape {tuple(G.shape)}")
    views = [_as_short_side(G, dtype) for G in grads]
    groups: dict[tuple, list[int]] = {}
    for i, (X, _) in enumerate(views):
        groups.setdefault((tuple(X.shape), X.device), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(grads)
    for members in groups.values():
        Q = _polar_stack(torch.stack([views[i][0] for i in members]), method, steps, order)
        for i, q in zip(members, Q):
            q = q.mT if views[i][1] else q
            out[i] = q.reshape(grads[i].shape).to(grads[i].dtype)
    return out


def polar(
    G: torch.Tensor, method: str = "quintic", steps: int = 5, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Approximate the orthogonal polar factor of ``G`` (ndim ≥ 2), returned in G's shape and dtype."""
    return polar_many([G], method, steps, dtype)[0]
