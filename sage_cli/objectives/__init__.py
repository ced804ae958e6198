"""DG objectives, one registry entry each: ``losses(model, xs, ys) -> tensor of K per-env losses``.

All envs go through one forward over their concatenation (Alg. 1, line 4); the objective then splits
the logits back per env."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import Registry

OBJECTIVES: Registry = Registry("objective")


def forward_per_env(model, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    logits = model(torch.cat(xs))
    return list(torch.split(logits, [len(x) for x in xs]))


@OBJECTIVES.register("erm")
class ERM:
    """Empirical risk: the mean cross-entropy of each env (their weighted mean is the ERM loss)."""

    def __init__(self, n_envs: int, cfg=None):
        self.n_envs = n_envs

    def losses(self, model, xs, ys) -> torch.Tensor:
        logits = forward_per_env(model, xs)
        return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])
