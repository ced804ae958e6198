"""Update rules, all with one API: ``opt.step(closure)``, where the closure returns the per-distribution
losses of one forward pass, and ``opt.stats`` afterwards.

    from sage_cli.optim import SAGE
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-6, gamma=1e-6, lr=1e-6, model=model)
    opt.step(lambda: per_env_losses(model, batches))
"""

from __future__ import annotations

import torch

from ..catalog import METHODS
from .base import SinglePassOptimizer, TwoPassOptimizer
from .gam import GAM
from .gga import GGA
from .muon import MuonWithAdam
from .pertask import FMTL, SAGESAMO, SAMO
from .polar import polar
from .sage import SAGE
from .sam import ASAM, DISAM, GSAM, SAGM, SAM
from .sgld import SGLD

__all__ = ["SAGE", "SAM", "ASAM", "GSAM", "SAGM", "DISAM", "GAM", "GGA", "SGLD", "MuonWithAdam", "SAMO", "SAGESAMO", "FMTL",
           "SinglePassOptimizer", "TwoPassOptimizer", "polar", "METHODS", "build_optimizer"]


def build_optimizer(model: torch.nn.Module, cfg, seed: int, extra=(), aggregator=None):
    """The optimizer a recipe's ``optimizer:`` section names, over all trainable parameters of ``model``
    (and ``extra`` ones, e.g. an objective's own modules); ``aggregator`` combines per-task losses (MTL)."""
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in extra if p.requires_grad]
    optimizer = METHODS.get(cfg.method)(params, cfg, model, seed)
    if aggregator is not None:
        optimizer.aggregator = aggregator
    return optimizer
