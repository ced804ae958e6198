"""Update rules, all with one API: ``opt.step(closure)``, where the closure returns the per-distribution
losses of one forward pass, and ``opt.stats`` afterwards.

    from sage_cli.optim import SAGE
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-6, gamma=1e-6, lr=1e-6, model=model)
    opt.step(lambda: per_env_losses(model, batches))

Names resolve on first use (PEP 562), so ``sage_cli.settings.methods`` (the recipes' settings) stays torch-free.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SAGE": ".sage", "SAM": ".sam", "ASAM": ".sam", "GSAM": ".sam", "SAGM": ".sam", "DISAM": ".sam", "GAM": ".gam",
    "GGA": ".gga", "SGLD": ".sgld", "MuonWithAdam": ".muon", "SAMO": ".pertask", "SAGESAMO": ".pertask",
    "FMTL": ".pertask", "SinglePassOptimizer": ".base", "TwoPassOptimizer": ".base", "Anchor": ".base",
    "polar": ".polar_factor", "METHODS": "..settings.methods", "build_optimizer": ".build",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
