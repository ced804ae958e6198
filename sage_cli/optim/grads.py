"""Per-distribution gradients and their agreement (Alg. 1, phases 1–2)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def as_loss_vector(losses: torch.Tensor) -> torch.Tensor:
    """The K per-distribution losses as a 1-D tensor; a 0-d loss means K = 1."""
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"losses must be a tensor, got {type(losses).__name__}")
    if losses.ndim > 1:
        raise ValueError(f"losses must be 0-d or 1-D (one per distribution), got shape {tuple(losses.shape)}")
    return losses.reshape(-1)


def loss_weights(losses: torch.Tensor, weights=None) -> torch.Tensor:
    """w_k: equal by default, else the given weights (e.g. sample counts n_k) normalised to sum to one."""
    K = losses.numel()
    if weights is None:
        return torch.full((K,), 1.0 / K, dtype=losses.dtype, device=losses.device)
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device).reshape(-1)
    if w.numel() != K:
        raise ValueError(f"got {w.numel()} weights for {K} losses")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative and not all zero")
    return w / w.sum()


def grads_of(loss: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = False) -> list:
    """∇ loss for each parameter; zeros where the loss does not depend on it."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def per_distribution_grads(losses: torch.Tensor, params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """g_k = ∇L_k for every k, from the one forward that produced ``losses``."""
    K = losses.numel()
    return [grads_of(losses[k], params, retain_graph=k < K - 1) for k in range(K)]


def weighted_sum(per_dist: list[list[torch.Tensor]], weights) -> list[torch.Tensor]:
    """Σ_k w_k g_k for every parameter (the weights read once: one host sync, not one per parameter and k)."""
    ws = weights.tolist() if isinstance(weights, torch.Tensor) else [float(w) for w in weights]
    return [sum(w * g[i] for w, g in zip(ws, per_dist)) for i in range(len(per_dist[0]))]


def flatten(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1).float() for g in grads])


def gram_matrix(per_dist: list[list[torch.Tensor]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """⟨g_i, g_j⟩ for every pair, accumulated parameter by parameter (no K × n copy of the gradients)."""
    K = len(per_dist)
    gram = None
    for i in range(len(per_dist[0]) if K else 0):
        B = torch.stack([task[i].reshape(-1).to(dtype) for task in per_dist])
        gram = B @ B.T if gram is None else gram + B @ B.T
    return gram if gram is not None else torch.zeros(K, K, dtype=dtype)


def gram_cosines(gram: torch.Tensor) -> torch.Tensor:
    """cos(g_i, g_j) for every pair i < j, from the Gramian."""
    K = gram.shape[0]
    norms = gram.diagonal().clamp_min(0).sqrt().clamp_min(1e-30)
    iu = torch.triu_indices(K, K, offset=1)
    return (gram / norms[:, None] / norms[None, :])[iu[0], iu[1]]


def mean_cosine(gram: torch.Tensor) -> float:
    """S = 2/(K(K−1)) Σ_{i<j} cos(g_i, g_j) from the Gramian; S = 1 when K = 1 (no pairs)."""
    return float(gram_cosines(gram).mean()) if gram.shape[0] > 1 else 1.0


def min_cosine(gram: torch.Tensor) -> float:
    """The worst-aligned pair (GGA's criterion); 1 when K = 1."""
    return float(gram_cosines(gram).min()) if gram.shape[0] > 1 else 1.0


def mean_pairwise_cosine(per_dist: list[list[torch.Tensor]]) -> float:
    """S = 2/(K(K−1)) Σ_{i<j} cos(g_i, g_j); S = 1 when K = 1 (no pairs)."""
    return mean_cosine(gram_matrix(per_dist)) if len(per_dist) > 1 else 1.0


def norm_of(tensors) -> torch.Tensor:
    """‖(t_1, …, t_n)‖₂ over all the tensors together, as a 0-dim float32 tensor (not read: no host sync)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))


def global_norm(tensors) -> float:
    """``norm_of`` read as a float: for a step that needs the number (SAM's ε = ρ ḡ/‖ḡ‖)."""
    return float(norm_of(tensors))


@contextmanager
def frozen_norm_stats(model):
    """Keep BatchNorm running statistics exactly as they were (the second forward must not move them)."""
    if model is None:
        yield
        return
    saved = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats:
            saved.append((m, {k: getattr(m, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")
                              if getattr(m, k, None) is not None}))
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)
