"""GradDrop (Chen et al., NeurIPS 2020), through TorchJD."""

from __future__ import annotations

from .torchjd import TorchJDAggregator


class GradDrop(TorchJDAggregator):
    """GradDrop (Chen et al. 2020), lines 10–15 of Algorithm 1: per coordinate keep the gradients of one sign,
    the positive one with probability P = ½(1 + Σg/Σ|g|). Applied here to the shared parameters' gradients
    (the paper applies it at a shared activation layer)."""

    random = True
    gramian_weighting = False  # per-coordinate signs: it needs the gradients themselves

    def make(self):
        from torchjd.aggregation import GradDrop as TorchJDGradDrop

        return TorchJDGradDrop()
