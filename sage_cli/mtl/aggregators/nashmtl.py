"""Nash-MTL (Navon et al., ICML 2022), through TorchJD (cvxpy + ECOS)."""

from __future__ import annotations

from .base import setting
from .torchjd import TorchJDAggregator


class NashMTL(TorchJDAggregator):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining weights, Ĝα = 1/α on the Gramian normalised by its
    norm, solved by the reference's sequence of convex (ECOS) problems; the update's norm clipped at 1."""

    def make(self):
        import warnings

        from torchjd.aggregation import NashMTL as TorchJDNashMTL

        warnings.filterwarnings("ignore", message="You are solving a parameterized problem that is not DPP")
        return TorchJDNashMTL(n_tasks=self.n_tasks, max_norm=float(setting(self.cfg, "nash_max_norm")),
                              update_weights_every=1, optim_niter=20)
