"""SGLD-style constant noise (the paper's Fig. 2 baseline): the gradient plus σ·ξ, ξ ~ N(0, I), whatever
the gradients' agreement — SAGE's noise without its alignment signal."""

from __future__ import annotations

import torch

from .base import SinglePassOptimizer, _check_non_negative
from .noise import NoiseSource


class SGLD(SinglePassOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, sigma: float = 1e-3, seed: int | None = None,
                 model=None, **base_kwargs):
        _check_non_negative(sigma=sigma)
        super().__init__(params, base_optimizer, model=model, defaults={"sigma": sigma}, **base_kwargs)
        self.noise_source = NoiseSource(seed)

    @torch.no_grad()
    def adjust_gradients(self, params):
        for p, sigma in zip(params, self.per_param("sigma")):
            if p.grad is not None and sigma > 0:
                p.grad.add_(self.noise_source.normal_like(p), alpha=sigma)
        self.stats["noise_scale"] = self.setting("sigma")

    def _extra_state(self) -> dict:
        return self.noise_source.state_dict()

    def _load_extra_state(self, state: dict) -> None:
        self.noise_source.load_state_dict(state)
