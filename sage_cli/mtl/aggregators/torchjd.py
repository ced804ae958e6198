"""The wrapper shared by the aggregators TorchJD supplies (PCGrad, IMTL-G, FairGrad, GradDrop, Nash-MTL)."""

from __future__ import annotations

import torch

from .base import GradientAggregator


class TorchJDAggregator(GradientAggregator):
    """An aggregator of TorchJD's (``torchjd.aggregation``), checked against the reference formulas in the tests."""

    random = False  # True: TorchJD draws from torch's global RNG; those draws come from our generator instead

    def make(self):
        raise NotImplementedError

    def combine(self, J, losses=None):
        if not hasattr(self, "_torchjd"):
            self._torchjd = self.make()
        if not self.random:
            return self._torchjd(J)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=self.generator)))
            return self._torchjd(J)
