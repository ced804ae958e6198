"""What every MTL aggregator shares, and its two kinds.

A ``LossWeighting`` (LS, SI, RLW, DWA, UW, FAMO, STL) differentiates a weighted total of the task losses.
A ``GradientAggregator`` (MGDA, PCGrad, IMTL-G, CAGrad, FairGrad, GradDrop, Nash-MTL, MoCo) combines the
per-task gradients of the *shared* parameters (everything but the task heads) into one vector; each
task-specific parameter gets its own task's gradient. Every optimizer takes an aggregator, so SAGE-X and
SAM-X are compositions, not new code: SAGE uses the per-task gradients at θ for its agreement S and X's
aggregate for its perturbation, then applies X again at θ+ε.
"""

from __future__ import annotations

import torch

from ...optim.grads import flatten, grads_of, gram_matrix, per_distribution_grads, weighted_sum


def setting(cfg, name):
    """A setting from the aggregator's ``cfg``, else its default (``settings/aggregators.py``, where each name is
    unique across aggregators)."""
    if cfg is not None and hasattr(cfg, name):
        return getattr(cfg, name)
    from ...settings.aggregators import AGGREGATORS

    return next(AGGREGATORS.get(n).model_fields[name].default for n in AGGREGATORS.names()
                if name in AGGREGATORS.get(n).model_fields)


class Aggregator:
    needs_jacobian = False  # True for the gradient aggregators: they need every task's gradient
    wants_losses_after_update = False  # FAMO: after_update(losses before, losses after) each step

    def __init__(self, n_tasks: int, cfg=None, seed: int = 0):
        self.n_tasks = n_tasks
        self.cfg = cfg
        self.shared_ids: set[int] | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.last_weights: torch.Tensor | None = None

    def bind(self, shared_parameters) -> Aggregator:
        """Which parameters are shared (the rest are task heads)."""
        self.shared_ids = {id(p) for p in shared_parameters}
        return self

    def shared_mask(self, params) -> list[bool]:
        return [self.shared_ids is None or id(p) in self.shared_ids for p in params]

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def gradients(self, losses: torch.Tensor, params: list[torch.Tensor], per_task=None,
                  gram=None) -> list[torch.Tensor]:
        """The gradient of every parameter in ``params``; ``per_task`` (g_k over ``params``) if known, and the
        Gramian of their shared parts if known (the Gramian-based aggregators use it)."""
        raise NotImplementedError

    # hooks and state -----------------------------------------------------------------------------
    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        pass

    def after_update(self, losses_before: torch.Tensor, losses_after: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class LossWeighting(Aggregator):
    """The gradient of ``total_loss(losses)``: one backward, or Σ_k ∂T/∂L_k · g_k from known g_k."""

    def total_loss(self, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, losses, params, per_task=None, gram=None):
        if per_task is None:
            return grads_of(self.total_loss(losses), params)
        return self._weighted_per_task(losses, params, per_task)

    def _weighted_per_task(self, losses, params, per_task):
        """The total loss's gradient from already computed g_k (SAGE has them): Σ_k ∂T/∂L_k · g_k, plus
        ∂T/∂s for the aggregator's own parameters (UW)."""
        L = losses.detach().requires_grad_(True)
        own = self.parameters()
        with torch.enable_grad():
            coeffs = torch.autograd.grad(self.total_loss(L), [L, *own], allow_unused=True)
        dL, own_grads = coeffs[0], {id(p): g for p, g in zip(own, coeffs[1:])}
        out = weighted_sum(per_task, dL)  # ∂T/∂L read once (a host sync per parameter and task was 1,188 on MTAN)
        for i, p in enumerate(params):
            if id(p) in own_grads:
                out[i] = own_grads[id(p)] if own_grads[id(p)] is not None else torch.zeros_like(p)
        return out


class GradientAggregator(Aggregator):
    """``combine(J, losses)``: the K × n Jacobian of the shared parameters (and the task losses, which MoCo
    reads) → one direction of length n.

    Where the direction is Σ_k c_k g_k with c a function of the Gramian G = JJᵀ alone (MGDA, PCGrad, IMTL-G,
    CAGrad, FairGrad, Nash-MTL), the subclass defines ``weights(G)`` instead: ``gradients`` then builds G
    parameter by parameter (float64) and never the K × n (float64) Jacobian, and SAGE hands it the Gramian it
    measured for its agreement."""

    needs_jacobian = True

    def combine(self, J: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        if not self.from_gramian:
            raise NotImplementedError
        return self.weights(J @ J.T).to(J.dtype) @ J

    def weights(self, gram: torch.Tensor) -> torch.Tensor:
        """c (K) from the K×K float64 Gramian of the shared parameters' task gradients."""
        raise NotImplementedError

    @property
    def from_gramian(self) -> bool:
        return type(self).weights is not GradientAggregator.weights

    def gradients(self, losses, params, per_task=None, gram=None):
        per_task = per_task if per_task is not None else per_distribution_grads(losses, params)
        if not self.from_gramian:
            return self.scatter(params, per_task, self.shared_direction(losses, params, per_task))
        shared = self.shared_mask(params)
        if gram is None:
            gram = gram_matrix([[g for g, s in zip(task, shared) if s] for task in per_task], torch.float64)
        c = [float(ck) for ck in self.weights(gram.double().cpu())]
        return [sum(ck * task[i] for ck, task in zip(c, per_task)) if s else sum(task[i] for task in per_task)
                for i, s in enumerate(shared)]

    def shared_direction(self, losses: torch.Tensor, params, per_task) -> torch.Tensor:
        """X applied to the per-task gradients of the shared parameters: one flat vector."""
        shared = self.shared_mask(params)
        J = torch.stack([flatten([g for g, s in zip(task, shared) if s]) for task in per_task])
        return self.combine(J.double(), losses.detach().double().cpu()).to(J.dtype)

    def scatter(self, params, per_task, direction: torch.Tensor) -> list[torch.Tensor]:
        """The flat shared ``direction`` back into parameter shapes; task heads get their own task's gradient."""
        out, offset = [], 0
        for i, (p, s) in enumerate(zip(params, self.shared_mask(params))):
            if s:
                out.append(direction[offset:offset + p.numel()].reshape(p.shape).to(p.dtype))
                offset += p.numel()
            else:
                out.append(sum(task[i] for task in per_task))
        return out
