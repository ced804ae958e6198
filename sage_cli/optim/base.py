"""Wrappers that give every update rule one API: ``step(closure)`` where the closure returns the K
per-distribution losses of one forward pass, plus ``stats`` after each step.

``TwoPassOptimizer`` holds what SAM-like rules share (perturb, re-evaluate, restore, base step); a subclass
only says how the perturbation ε is built (and, for SAGE, what is added to the perturbed gradient).
The param groups are the base optimizer's own, and every hyper-parameter (ρ, γ, …) lives in them, read per
parameter at each step: a group may set its own ρ as it sets its own ``lr``, and LR schedulers act directly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .grads import (
    as_loss_vector,
    frozen_norm_stats,
    grads_of,
    loss_weights,
    norm_of,
    weighted_sum,
)
from .stats import StepStats


def _check_non_negative(**values):
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class Anchor:
    """An exact copy of θ, to move the parameters to θ + ε and back. Restoring copies θ rather than
    subtracting ε: θ + ε − ε differs from θ in the last bits, and a resumed run must be bit-identical."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.theta = [p.detach().clone() for p in params]

    @torch.no_grad()
    def move(self, offsets, alpha: float = 1.0) -> None:
        """Parameters at θ + α·ε (from θ, wherever they are now); ``None`` offsets leave θ. One foreach kernel
        per operation over all parameters (the same element-wise arithmetic, so the same bits)."""
        self.restore()
        moved = [(p, e) for p, e in zip(self.params, offsets) if e is not None]
        if moved:
            torch._foreach_add_([p for p, _ in moved], [e for _, e in moved], alpha=alpha)

    @torch.no_grad()
    def restore(self) -> None:
        torch._foreach_copy_(self.params, self.theta)

    @contextmanager
    def at(self, offsets, alpha: float = 1.0):
        """Parameters at θ + α·ε inside the block, at θ again after it (also on error)."""
        self.move(offsets, alpha)
        try:
            yield
        finally:
            self.restore()


class WrappedOptimizer(torch.optim.Optimizer):
    """Shares param groups with a base torch optimizer built from ``base_optimizer(params, **base_kwargs)``."""

    def __init__(self, params, base_optimizer, defaults: dict, model=None, aggregator=None, **base_kwargs):
        super().__init__(params, {**defaults, **base_kwargs})
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model  # only used to keep BatchNorm statistics out of extra forwards
        # MTL: how per-task losses become one gradient (sage_cli.mtl.aggregators); None: their weighted mean.
        self.aggregator = aggregator
        self.stats = StepStats()  # read as floats; kept unread on the device until then

    def combined_gradients(self, losses, weights, params, per_task=None, gram=None) -> list:
        """The gradient to follow: the aggregator's, or that of the weighted mean of the losses. ``gram``: the
        Gramian of the shared parts of ``per_task``, where already measured."""
        if self.aggregator is not None:
            return self.aggregator.gradients(losses, params, per_task, gram)
        if per_task is not None:
            return weighted_sum(per_task, weights)
        return grads_of((weights * losses).sum(), params)

    def shared_mask(self, params) -> list[bool]:
        """Which of ``params`` are shared across tasks: the aggregator's binding (MTL), else all of them."""
        if self.aggregator is None:
            return [True] * len(params)
        return self.aggregator.shared_mask(params)

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def per_param(self, name: str) -> list:
        """The setting ``name`` of each parameter's group, in ``_params()`` order."""
        return [group[name] for group in self.param_groups for p in group["params"] if p.requires_grad]

    def setting(self, name: str):
        """The setting of the first group: what ``stats`` report, and the value when groups agree."""
        return self.param_groups[0][name]

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

    def __init__(self, params, base_optimizer=torch.optim.Adam, model=None, defaults: dict | None = None,
                 **base_kwargs):
        super().__init__(params, base_optimizer, defaults or {}, model=model, **base_kwargs)

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
        self.stats = StepStats(loss=loss, grad_norm=norm_of(grads))
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
        self._anchor: Anchor | None = None

    # --- what subclasses define -------------------------------------------------------------------
    def perturbations(self, params, grads) -> list:
        raise NotImplementedError

    def aggregate(self, losses, weights, params) -> tuple[list, dict]:
        """The aggregate gradient at θ (ḡ = Σ w_k g_k, or the aggregator's) and statistics gathered on the way."""
        return self.combined_gradients(losses, weights, params), {}

    def descent_gradient(self, clean, perturbed) -> list:
        """The gradient handed to the base optimizer, from the gradients at θ and at θ+ε (SAM: the latter)."""
        return perturbed

    def descent_noise_scales(self, params) -> list[float] | None:
        """β per parameter for the noise β·ξ added at descent; None: no noise."""
        return None

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
        self._anchor = Anchor(params)
        self._anchor.move(eps)
        self.stats = StepStats(loss=(w * losses).sum(), grad_norm=norm_of(grads), perturbation_norm=norm_of(eps),
                               **extra)

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
        self._anchor.restore()
        self._anchor = None
        add_noise(self, params, grads)
        self.base_optimizer.step()
        self.stats["perturbed_loss"] = perturbed_loss

    def sharpness(self, closure, weights=None) -> float:
        """L(θ+ε) − L(θ) for this optimizer's ε, with θ restored and no update (App. D's measurement)."""
        with torch.enable_grad():
            losses = as_loss_vector(closure())
        self.first_step(losses, weights)
        with frozen_norm_stats(self.model), torch.no_grad():
            perturbed = as_loss_vector(closure())
        self._anchor.restore()
        self._anchor = None
        w = loss_weights(losses, weights)
        return float((w * perturbed).sum() - (w * losses.detach()).sum())

    def first_forward(self, closure, weights=None):
        """The forward at θ: the closure's per-distribution losses (SAGE also gathers its statistics here)."""
        return closure()

    def step(self, closure, weights=None):
        """Both passes; ``closure`` re-runs the forward and returns the per-distribution losses."""
        with torch.enable_grad():
            losses = self.first_forward(closure, weights)
        self.first_step(losses, weights)
        # the statistics are restored after the backward: BatchNorm saves its running buffers for it
        with frozen_norm_stats(self.model):
            with torch.enable_grad():
                perturbed = closure()
            self.second_step(perturbed, weights)
        return as_loss_vector(losses).detach()


@torch.no_grad()
def add_noise(optimizer, params, grads) -> None:
    """Hand ``grads`` to the parameters, each plus β·ξ where the optimizer's β for it is positive."""
    betas = optimizer.descent_noise_scales(params)
    for i, (p, g) in enumerate(zip(params, grads)):
        if betas is not None and betas[i] > 0:
            g.add_(optimizer.noise_like(p), alpha=betas[i])
        p.grad = g
