"""Theorem 1's two terms for a training task at its current parameters: the task gives its K
per-distribution losses on fixed, seeded batches (``distribution_losses``), measured in eval mode so that
no normalisation statistic moves and the loss is one deterministic function of θ."""

from __future__ import annotations

import torch

from .terms import Terms, two_terms

DIAG_KEYS = ("curvature_trace", "curvature_stderr", "alignment_trace", "cg_residual", "cg_iterations",
             "cg_negative_curvature", "agreement", "lambda_max", "lambda_min", "damping", "K", "hessian_products")


def measure(task, batches: int = 2, probes: int = 8, damping: float = 1e-3, cg_iters: int = 20,
            power_iters: int = 10, sigma: float = 0.0, seed: int = 0) -> Terms:
    model = task.model
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            losses, params = task.distribution_losses(batches, seed)
            return two_terms(losses, params, probes=probes, damping=damping, cg_iters=cg_iters,
                             power_iters=power_iters, sigma=sigma, seed=seed)
    finally:
        model.train(was_training)


def diag_metrics(terms: Terms) -> dict[str, float]:
    """The ``diag_*`` metrics a run logs."""
    values = terms.to_dict()
    return {f"diag_{k}": float(values[k]) for k in (*DIAG_KEYS, "alignment_term", "alignment_factor")}


def checkpoint_metrics(task, cfg) -> dict[str, float]:
    """``diagnostics`` settings of a recipe → the metrics of one checkpoint."""
    return diag_metrics(measure(task, cfg.batches, cfg.probes, cfg.damping, cfg.cg_iters, cfg.power_iters))
