"""The optimizer a recipe names, over a model's trainable parameters."""

from __future__ import annotations


def build_optimizer(model, settings, seed: int, extra=(), aggregator=None):
    """``settings`` (a recipe's ``optimizer:`` section) over all trainable parameters of ``model`` and
    ``extra`` ones (an objective's own modules, an aggregator's); ``aggregator`` combines per-task losses."""
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in extra if p.requires_grad]
    optimizer = settings.build(params, model=model, seed=seed)
    optimizer.aggregator = aggregator
    return optimizer
