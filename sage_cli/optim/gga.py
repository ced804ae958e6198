"""GGA: Gradient-Guided Annealing (Ballas & Diou, CVPR 2025).

Inside an annealing window of steps, before the update, candidates θ' = θ + U(−a, a) are drawn around the
current θ; a candidate is accepted when the minimum pairwise cosine of the per-domain gradients improves on
the best so far while the loss rises by less than a tolerance (the authors' acceptance rule). The update is
then an ordinary base-optimizer step from the best point found. Outside the window GGA is plain training.
Candidates are drawn around θ each time (the authors' code lets rejected candidates accumulate).
"""

from __future__ import annotations

import torch

from .base import Anchor, SinglePassOptimizer, _check_non_negative
from .grads import frozen_norm_stats, loss_weights, min_cosine
from .noise import NoiseSource
from .per_domain import PerDomainGradients


def gga_accepts(loss: float, best_loss: float, similarity: float, best_similarity: float,
                tolerance: float = 0.1) -> bool:
    """The acceptance rule: better gradient agreement, at a loss no more than ``tolerance`` worse."""
    return (loss - best_loss) < tolerance and similarity > best_similarity


class GGA(SinglePassOptimizer):
    def __init__(self, params, base_optimizer=torch.optim.Adam, start: int = 0, end: int = 100,
                 candidates: int = 10, neighborhood: float = 1e-4, tolerance: float = 0.1, seed: int | None = None,
                 model=None, **base_kwargs):
        _check_non_negative(start=start, end=end, candidates=candidates, neighborhood=neighborhood)
        super().__init__(params, base_optimizer, model=model, **base_kwargs)
        self.start, self.end, self.candidates = start, end, candidates
        self.neighborhood, self.tolerance = neighborhood, tolerance
        self.noise_source = NoiseSource(seed)
        self.per_domain = PerDomainGradients(model)
        self.n_steps = 0

    def _measure(self, closure, weights, params) -> tuple[float, float]:
        with torch.enable_grad():  # the Gramian, from one backward where the losses are per-block means
            losses, _, gram = self.per_domain.measure(closure, weights, params)
        return float((loss_weights(losses, weights) * losses).sum()), min_cosine(gram)

    def anneal(self, closure, weights=None) -> int:
        """Search the neighbourhood; leave the parameters at the best candidate. Returns how many were accepted."""
        params = self._params()
        anchor = Anchor(params)
        best = anchor.theta
        accepted = 0
        with frozen_norm_stats(self.model):
            best_loss, best_sim = self._measure(closure, weights, params)
            for _ in range(self.candidates):
                anchor.move([self.noise_source.uniform_like(t, -self.neighborhood, self.neighborhood)
                             for t in anchor.theta])
                loss, sim = self._measure(closure, weights, params)
                if gga_accepts(loss, best_loss, sim, best_sim, self.tolerance):
                    best_loss, best_sim, accepted = loss, sim, accepted + 1
                    best = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, b in zip(params, best):
                    p.copy_(b)
        return accepted

    def step(self, closure, weights=None):
        accepted = None
        if self.start <= self.n_steps <= self.end and self.candidates > 0:
            accepted = self.anneal(closure, weights)
        losses = super().step(closure, weights)
        if accepted is not None:
            self.stats["gga_accepted"] = accepted
        self.n_steps += 1
        return losses

    def _extra_state(self) -> dict:
        return {"noise": self.noise_source.state_dict(), "n_steps": self.n_steps}

    def _load_extra_state(self, state: dict) -> None:
        self.noise_source.load_state_dict(state["noise"])
        self.n_steps = int(state["n_steps"])
