"""The wrapper shared by the aggregators TorchJD supplies (PCGrad, IMTL-G, FairGrad, GradDrop, Nash-MTL)."""

from __future__ import annotations

import torch

from .base import GradientAggregator


def gramian_factor(gram: torch.Tensor) -> torch.Tensor:
    """A K×K matrix L with L Lᵀ = G (from G's eigendecomposition, so a singular G is fine): TorchJD's weightings
    read their input only through its Gramian (and, Nash-MTL, the norm of a combination, ‖αᵀL‖ = √(αᵀGα)),
    so L stands in for the K × n Jacobian."""
    values, vectors = torch.linalg.eigh(gram)
    return vectors * values.clamp_min(0).sqrt()


class TorchJDAggregator(GradientAggregator):
    """An aggregator of TorchJD's (``torchjd.aggregation``), checked against the reference formulas in the tests.
    The subclasses whose TorchJD weighting is a function of the Gramian (``from_gramian``) get their weights from it."""

    random = False  # True: TorchJD draws from torch's global RNG; those draws come from our generator instead
    gramian_weighting = True  # False: the aggregate needs the Jacobian itself (GradDrop)

    def make(self):
        raise NotImplementedError

    @property
    def from_gramian(self) -> bool:
        return self.gramian_weighting

    def _call(self, fn, x):
        if not hasattr(self, "_torchjd"):
            self._torchjd = self.make()
        if not self.random:
            return fn(self._torchjd, x)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=self.generator)))
            return fn(self._torchjd, x)

    def combine(self, J, losses=None):
        return self._call(lambda agg, J: agg(J), J)

    def weights(self, gram):
        return self._call(lambda agg, L: agg.weighting(L), gramian_factor(gram))
