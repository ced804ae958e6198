"""Builders named in catalog.METHODS: ``builder(params, optimizer config, model, noise seed)``."""

from __future__ import annotations

import torch

from .base import SinglePassOptimizer
from .gam import GAM
from .gga import GGA
from .muon import MuonWithAdam
from .pertask import FMTL, SAGESAMO, SAMO
from .sage import SAGE
from .sam import ASAM, DISAM, GSAM, SAGM, SAM
from .sgld import SGLD

BASE_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}



def _base_kwargs(cfg) -> dict:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.base == "sgd":
        kwargs["momentum"] = cfg.momentum
    return kwargs


def erm(params, cfg, model, seed):
    return SinglePassOptimizer(params, BASE_OPTIMIZERS[cfg.base], model=model, **_base_kwargs(cfg))


def sam(params, cfg, model, seed):
    return SAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, model=model, **_base_kwargs(cfg))


def asam(params, cfg, model, seed):
    return ASAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, eta=cfg.eta, model=model, **_base_kwargs(cfg))


def sage(params, cfg, model, seed):
    if cfg.perturbation == "samo":  # SAGE-SAMO: SAMO's per-task directions, SAGE's ascent and noise
        return SAGESAMO(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, gamma=cfg.gamma, polar=cfg.polar,
                        ns_steps=cfg.ns_steps, scale_by_weight_norm=cfg.scale_by_weight_norm,
                        bias_rule=cfg.bias_rule, noise=cfg.noise, **_samo_kwargs(cfg), seed=seed, model=model,
                        **_base_kwargs(cfg))
    return SAGE(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, gamma=cfg.gamma, polar=cfg.polar,
                ns_steps=cfg.ns_steps, scale_by_weight_norm=cfg.scale_by_weight_norm, bias_rule=cfg.bias_rule,
                noise=cfg.noise, seed=seed, model=model, **_base_kwargs(cfg))


def _samo_kwargs(cfg) -> dict:
    return {"beta": cfg.samo_beta, "zo_eps": cfg.samo_zo_eps, "layerwise": cfg.samo_layerwise,
            "max_norm": cfg.samo_max_norm}


def samo(params, cfg, model, seed):
    return SAMO(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, **_samo_kwargs(cfg), seed=seed, model=model,
                **_base_kwargs(cfg))


def fmtl(params, cfg, model, seed):
    return FMTL(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, adaptive=cfg.fmtl_adaptive,
                decompose=cfg.fmtl_decompose, model=model, **_base_kwargs(cfg))


def gsam(params, cfg, model, seed):
    return GSAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, alpha=cfg.alpha, model=model, **_base_kwargs(cfg))


def sagm(params, cfg, model, seed):
    return SAGM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, alpha=cfg.alpha, model=model, **_base_kwargs(cfg))


def disam(params, cfg, model, seed):
    return DISAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, variance_weight=cfg.variance_weight, model=model,
                 **_base_kwargs(cfg))


def gam(params, cfg, model, seed):
    return GAM(params, BASE_OPTIMIZERS[cfg.base], rho=cfg.rho, norm_rho=cfg.gam_norm_rho, gamma=cfg.gam_gamma,
               model=model, **_base_kwargs(cfg))


def gga(params, cfg, model, seed):
    return GGA(params, BASE_OPTIMIZERS[cfg.base], start=cfg.gga_start, end=cfg.gga_end, candidates=cfg.gga_candidates,
               neighborhood=cfg.gga_neighborhood, tolerance=cfg.gga_tolerance, seed=seed, model=model,
               **_base_kwargs(cfg))


def sgld(params, cfg, model, seed):
    return SGLD(params, BASE_OPTIMIZERS[cfg.base], sigma=cfg.sigma, seed=seed, model=model, **_base_kwargs(cfg))


def muon(params, cfg, model, seed):
    return SinglePassOptimizer(params, MuonWithAdam, model=model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               ns_steps=cfg.ns_steps)
