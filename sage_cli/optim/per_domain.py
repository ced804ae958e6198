"""Per-distribution gradient statistics — ḡ = Σ_k w_k g_k and the Gramian ⟨g_i, g_j⟩, all S needs — by one of
two paths:

- ``one-backward``: when the K losses are means over disjoint blocks of one concatenated batch (the trainer says
  so with ``batch_blocks``) and no layer mixes samples, one backward of Σ_k L_k through ``block_rules`` gives
  every block's gradient layer by layer (cost ≈ one forward–backward, no K copies of the parameters).
- ``exact``: K ``autograd.grad`` calls over the whole graph (train-mode BatchNorm over the concatenated batch,
  an objective whose losses mix blocks, MTL tasks that share every sample).

The first one-backward measurement of a process is checked against the exact path (same batch, the RNG
replayed, BatchNorm statistics kept); a mismatch prints one line and the exact path is used from then on, so
what is computed never changes, only how fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..errors import notice
from . import block_ops, block_rules
from .grads import (
    as_loss_vector,
    flatten,
    frozen_norm_stats,
    gram_matrix,
    loss_weights,
    per_distribution_grads,
    weighted_sum,
)

_BLOCKS: ContextVar[list[int] | None] = ContextVar("sage_batch_blocks", default=None)


@contextmanager
def batch_blocks(sizes):
    """Inside the block, the closure's K losses are means over consecutive blocks of these sizes of one batch
    (the DG trainer says so for ERM, whose env losses are their own blocks' means)."""
    token = _BLOCKS.set([int(s) for s in sizes])
    try:
        yield
    finally:
        _BLOCKS.reset(token)


def current_blocks() -> list[int] | None:
    return _BLOCKS.get()


class _Rng:
    """The global RNG states (CPU and initialised CUDA devices): dropout replays when set back."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class PerDomainGradients:
    """``measure(closure, weights, params)`` → (losses, ḡ per parameter, K×K Gramian), by the fastest exact path."""

    def __init__(self, model=None, notice=notice, verify: bool = True, tolerance: float = 1e-3):
        self.model, self.notice, self.verify = model, notice, verify
        # how far the first one-backward measurement may be from the exact one: float32 rounding by default; a
        # trainer under TF32 or bfloat16 raises it to that precision's (train/runtime.py), so a GPU run does
        # not fall back to K backward passes over rounding
        self.tolerance = tolerance
        self.path: str | None = None  # the path the last measurement took
        self.reason: str | None = None  # why the one-backward path was not taken
        self._disabled: str | None = None
        self._verified = False

    def plan(self, params) -> tuple[list, str | None]:
        if self._disabled:
            return [], self._disabled
        if self.model is None:
            return [], "the optimizer was given no model"
        return block_rules.plan(self.model, params)

    def measure(self, closure, weights: torch.Tensor, params):
        if current_blocks() is None:  # the losses are not per-block means (MTL, IRM, …): nothing to say
            self.path = "exact"
            return self._exact(closure(), weights, params)
        installs, why = self.plan(params)
        if installs:
            rng = _Rng()
            try:
                out = self._one_backward(closure, weights, params, installs)
            except block_ops.Inseparable as exc:
                rng.restore()
                self._disable(str(exc))
            else:
                exact = self._check(closure, weights, params, rng, out) if self.verify and not self._verified else None
                if exact is None:
                    self.path, self.reason = "one-backward", None
                    return out
                self.path = "exact"
                return exact
        else:
            self._report(why)
        self.path = "exact"
        return self._exact(closure(), weights, params)

    # --- the two paths ------------------------------------------------------------------------------
    def _one_backward(self, closure, weights, params, installs):
        collector = block_ops.Collector(current_blocks())
        with block_rules.installed(installs, collector):
            losses = as_loss_vector(closure())
        if losses.numel() != len(collector.sizes):
            raise block_ops.Inseparable(f"{losses.numel()} losses for {len(collector.sizes)} blocks")
        collector.weights = loss_weights(losses, weights).detach()
        torch.autograd.backward(losses.sum())
        grads, gram = collector.result(params)
        return losses.detach(), grads, gram

    @staticmethod
    def _exact(losses, weights, params):
        losses = as_loss_vector(losses)
        per_dist = per_distribution_grads(losses, params)
        return losses.detach(), weighted_sum(per_dist, loss_weights(losses, weights)), gram_matrix(per_dist)

    # --- the first measurement is checked -----------------------------------------------------------
    def _check(self, closure, weights, params, rng_before, out):
        """The exact measurement of the same forward, returned (and the fast path given up) if it differs."""
        after = _Rng()
        rng_before.restore()
        with frozen_norm_stats(self.model):
            exact = self._exact(closure(), weights, params)
        after.restore()
        self._verified = True
        problem = mismatch(out[1], out[2], exact[1], exact[2], self.tolerance)
        if problem:
            self._disable(f"the one-backward statistics differ from the exact ones ({problem})")
            return exact
        return None

    def _disable(self, why: str) -> None:
        self._disabled = why
        self._report(why)

    def _report(self, why: str | None) -> None:
        if why != self.reason:
            self.notice(f"per-domain gradients by {len(current_blocks())} backward passes "
                        f"(exact path): {why}")
        self.reason = why


def mismatch(grads, gram, ref_grads, ref_gram, tol: float = 1e-3) -> str | None:
    """Why two measurements of (ḡ, Gramian) disagree beyond float error, or None."""
    g, r = flatten(grads), flatten(ref_grads)
    rel = float((g - r).norm() / r.norm().clamp_min(1e-30))
    if rel > tol:
        return f"‖Δḡ‖/‖ḡ‖ = {rel:.2e}"
    scale = float(ref_gram.diagonal().max().clamp_min(1e-30))
    gap = float((gram - ref_gram).abs().max()) / scale
    if gap > tol:
        return f"Gramian off by {gap:.2e} of its largest entry"
    return None
