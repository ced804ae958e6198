"""FairGrad (Ban & Ji, ICML 2024), through TorchJD."""

from __future__ import annotations

from .base import setting
from .torchjd import TorchJDAggregator


class FairGrad(TorchJDAggregator):
    """FairGrad (Ban & Ji 2024): α-fair weights solving G w = w^(−1/α); update Σ w_k g_k (α = 2)."""

    def make(self):
        from torchjd.aggregation import FairGrad as TorchJDFairGrad

        return TorchJDFairGrad(alpha=float(setting(self.cfg, "fairgrad_alpha")))
