"""Update rules, all with one API: ``opt.step(closure)``, where the closure returns the per-distribution
losses of one forward pass, and ``opt.stats`` afterwards.

    from sage_cli.optim import SAGE
    opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-6, gamma=1e-6, lr=1e-6, model=model)
    opt.step(lambda: per_env_losses(model, batches))
"""

from __future__ import annotations

import torch

from ..registry import Registry
from .base import SinglePassOptimizer, TwoPassOptimizer
from .gam import GAM
from .gga import GGA
from .muon import MuonWithAdam
from .polar import polar
from .sage import SAGE
from .sam import ASAM, DISAM, GSAM, SAGM, SAM
from .sgld import SGLD

__all__ = ["SAGE", "SAM", "ASAM", "GSAM", "SAGM", "DISAM", "GAM", "GGA", "SGLD", "MuonWithAdam",
           "SinglePassOptimizer", "TwoPassOptimizer", "polar", "BASE_OPTIMIZERS", "METHODS", "build_optimizer"]

BASE_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}

# method name -> builder(params, optimizer config, model, noise seed)
METHODS: Registry = Registry("optimizer method")


def _base_kwargs(cfg) -> dict:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.base == "sgd":
        kwargs["momentum"] = cfg.momentum
    return kwargs


@METHODS.register("erm")
def _erm(params, cfg, model, seed):
    return SinglePassOptimizer(params, BASE_OPTIMIZERS[cfg.base], model=model, **_base_kwargs(cfg))


@METHODS.register("sam")
def _sam(params, cfg, model, seed):
    return SAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, model=model, **_base_kwargs(cfg))


@METHODS.register("asam")
def _asam(params, cfg, model, seed):
    return ASAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, eta=cfg.eta, model=model, **_base_kwargs(cfg))


@METHODS.register("sage")
def _sage(params, cfg, model, seed):
    return SAGE(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, gamma=cfg.gamma, polar=cfg.polar,
                ns_steps=cfg.ns_steps, scale_by_weight_norm=cfg.scale_by_weight_norm, bias_rule=cfg.bias_rule,
                noise=cfg.noise, seed=seed, model=model, **_base_kwargs(cfg))


@METHODS.register("gsam")
def _gsam(params, cfg, model, seed):
    return GSAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, alpha=cfg.alpha, model=model, **_base_kwargs(cfg))


@METHODS.register("sagm")
def _sagm(params, cfg, model, seed):
    return SAGM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, alpha=cfg.alpha, model=model, **_base_kwargs(cfg))


@METHODS.register("disam")
def _disam(params, cfg, model, seed):
    return DISAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, variance_weight=cfg.variance_weight, model=model,
                 **_base_kwargs(cfg))


@METHODS.register("gam")
def _gam(params, cfg, model, seed):
    return GAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, norm_rho=cfg.gam_norm_rho, gamma=cfg.gam_gamma,
               model=model, **_base_kwargs(cfg))


@METHODS.register("gga")
def _gga(params, cfg, model, seed):
    return GGA(params, BASE_OPTIMIZERS[cfg.base], start=cfg.gga_start, end=cfg.gga_end, candidates=cfg.gga_candidates,
               neighborhood=cfg.gga_neighborhood, tolerance=cfg.gga_tolerance, seed=seed, model=model,
               **_base_kwargs(cfg))


@METHODS.register("sgld")
def _sgld(params, cfg, model, seed):
    return SGLD(params, BASE_OPTIMIZERS[cfg.base], sigma=cfg.sigma, seed=seed, model=model, **_base_kwargs(cfg))


@METHODS.register("muon")
def _muon(params, cfg, model, seed):
    return SinglePassOptimizer(params, MuonWithAdam, model=model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               ns_steps=cfg.ns_steps)


def build_optimizer(model: torch.nn.Module, cfg, seed: int, extra=()):
    """The optimizer a recipe's ``optimizer:`` section names, over all trainable parameters of ``model``
    (and ``extra`` ones, e.g. an objective's own modules)."""
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in extra if p.requires_grad]
    return METHODS.get(cfg.method)(params, cfg, model, seed)
