"""Wrappers that give every update rule one API: ``step(closure)`` where the closure returns the K
per-distribution losses of one forward pass, plus ``stats`` after each step.

``TwoPassOptimizer`` holds what SAM-like rules share (perturb, re-evaluate, restore, base step); a subclass
only says how the perturbation ε is built (and, for SAGE, what is added to the perturbed gradient).
The param groups are the base optimizer's own, so LR schedulers and per-group settings act on it directly.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .grads import (
    as_loss_vector,
    frozen_norm_stats,
    global_norm,
    grads_of,
    loss_weights,
)


def _check_non_negative(**values):
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class WrappedOptimizer(torch.optim.Optimizer):
    """Shares param groups with a base torch optimizer built from ``base_optimizer(params, **base_kwargs)``."""

    def __init__(self, params, base_optimizer, defaults: dict, model=None, aggregator=None, **base_kwargs):
        super().__init__(params, {**defaults, **base_kwargs})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model  # only used to keep BatchNorm statistics out of extra forwards
        # MTL: how per-task losses become one gradient (sage_cli.mtl.aggregators); None: their weighted mean.
        # Every subclass passes its extra keywords up to here, so ``aggregator=`` works for all of them.
        self.aggregator = aggregator
        self.stats: dict[str, float] = {}

    def combined_gradients(self, losses, weights, params, per_task=None) -> list:
        """The gradient to follow: the aggregator's, or that of the weighted mean of the losses."""
        if self.aggregator is not None:
            return self.aggregator.gradients(losses, params, per_task)
        if per_task is not None:
            return [sum(float(w) * g[i] for w, g in zip(weights, per_task)) for i in range(len(params))]
        return grads_of((weights * losses).sum(), params)

    def shared_mask(self, params) -> list[bool]:
        """Which of ``params`` are shared across tasks: the aggregator's binding (MTL), else all of them."""
        if self.aggregator is None:
            return [True] * len(params)
        return self.aggregator.shared_mask(params)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"base": self.base_optimizer.state_dict(), "extra": self._extra_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        # torch rebuilds the list on load: share it again
        self.param_groups = self.base_optimizer.param_groups
        self._load_extra_state(state_dict.get("extra", {}))


class SinglePassOptimizer(WrappedOptimizer):
    """Plain training (ERM with Adam, Muon, …): one forward, the aggregate gradient, the base step."""

    def __init__(self, params, base_optimizer=torch.optim.Adam, model=None, **base_kwargs):
        super().__init__(params, base_optimizer, {}, model=model, **base_kwargs)

    def step(self, closure, weights=None):
        with torch.enable_grad():
            losses = as_loss_vector(closure())
            w = loss_weights(losses, weights)
            loss = (w * losses).sum()
            params = self._params()
            grads = self.combined_gradients(losses, w, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.grad = g
        self.stats = {"loss": float(loss.detach()), "grad_norm": global_norm(grads)}
        self.adjust_gradients(params)
        self.base_optimizer.step()
        return losses.detach()

    def adjust_gradients(self, params) -> None:
        """A hook between the gradient and the base step (SGLD adds its noise here)."""


class TwoPassOptimizer(WrappedOptimizer):
    """Ascent to θ+ε, gradient there, exact restore of θ, base step (SAM's two-pass scheme).

    Subclasses implement ``perturbations(params, grads)``, and may override ``aggregate`` (SAGE computes every
    g_k there for its agreement) and ``descent_gradient`` (GSAM, SAGM).
    """

    def __init__(self, params, base_optimizer=torch.optim.Adam, rho: float = 0.05, model=None,
                 defaults: dict | None = None, **base_kwargs):
        _check_non_negative(rho=rho)
        super().__init__(params, base_optimizer, {"rho": rho, **(defaults or {})}, model=model, **base_kwargs)
        self.rho = rho

    # --- what subclasses define -------------------------------------------------------------------
    def perturbations(self, params, grads) -> list:
        raise NotImplementedError

    def aggregate(self, losses, weights, params) -> tuple[list, dict]:
        """The aggregate gradient at θ (ḡ = Σ w_k g_k, or the aggregator's) and statistics gathered on the way."""
        return self.combined_gradients(losses, weights, params), {}

    def descent_gradient(self, clean, perturbed) -> list:
        """The gradient handed to the base optimizer, from the gradients at θ and at θ+ε (SAM: the latter)."""
        return perturbed

    def descent_noise_scale(self) -> float:
        return 0.0

    def noise_like(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- the two passes ---------------------------------------------------------------------------
    def first_step(self, losses, weights=None) -> None:
        """Gradients at θ from the per-distribution ``losses``; move every parameter to θ+ε."""
        losses = as_loss_vector(losses)
        w = loss_weights(losses, weights)
        params = self._params()
        with torch.enable_grad():
            grads, extra = self.aggregate(losses, w, params)
        eps = self.perturbations(params, grads)
        self._clean_grads = grads
        with torch.no_grad():
            for p, e in zip(params, eps):
                self.state[p]["theta"] = p.detach().clone()  # exact copy: restore is a copy, not θ+ε−ε
                if e is not None:
                    p.add_(e)
        self.stats = {
            "loss": float((w * losses).sum().detach()),
            "grad_norm": global_norm(grads),
            "perturbation_norm": global_norm(eps),
            **extra,
        }

    def second_step(self, losses, weights=None) -> None:
        """Gradient of the aggregate loss at θ+ε, restore θ bit-exactly, add β·ξ, base step."""
        losses = as_loss_vector(losses)
        w = loss_weights(losses, weights)
        params = self._params()
        perturbed_loss = (w * losses).sum()
        with torch.enable_grad():
            grads = self.combined_gradients(losses, w, params)
        grads = self.descent_gradient(self._clean_grads, grads)
        self._clean_grads = None
        beta = self.descent_noise_scale()
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.copy_(self.state[p].pop("theta"))
                if beta > 0:
                    g.add_(self.noise_like(p), alpha=beta)
                p.grad = g
        self.base_optimizer.step()
        self.stats["perturbed_loss"] = float(perturbed_loss.detach())

    def sharpness(self, closure, weights=None) -> float:
        """L(θ+ε) − L(θ) for this optimizer's ε, with θ restored and no update (App. D's measurement)."""
        with torch.enable_grad():
            losses = as_loss_vector(closure())
        self.first_step(losses, weights)
        guard = frozen_norm_stats(self.model) if self.model is not None else nullcontext()
        with guard, torch.no_grad():
            perturbed = as_loss_vector(closure())
            for p in self._params():
                p.copy_(self.state[p].pop("theta"))
        w = loss_weights(losses, weights)
        return float((w * perturbed).sum() - (w * losses.detach()).sum())

    def step(self, closure, weights=None):
        """Both passes; ``closure`` re-runs the forward and returns the per-distribution losses."""
        with torch.enable_grad():
            losses = closure()
        self.first_step(losses, weights)
        # the statistics are restored after the backward: BatchNorm saves its running buffers for it
        guard = frozen_norm_stats(self.model) if self.model is not None else nullcontext()
        with guard:
            with torch.enable_grad():
                perturbed = closure()
            self.second_step(perturbed, weights)
        return as_loss_vector(losses).detach()
