"""PCGrad (Yu et al., NeurIPS 2020), through TorchJD."""

from __future__ import annotations

from .torchjd import TorchJDAggregator


class PCGrad(TorchJDAggregator):
    """PCGrad (Yu et al. 2020): each g_i projected off the g_j it conflicts with, in random order; summed."""

    random = True

    def make(self):
        from torchjd.aggregation import PCGrad as TorchJDPCGrad

        return TorchJDPCGrad()
