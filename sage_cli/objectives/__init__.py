"""DG objectives, one short module each, registered by name.

An objective turns one step's per-env batches into the K per-env losses the optimizer sees. All envs go
through one forward over their concatenation (Alg. 1, line 4). A penalty shared by all envs (VREx's
variance, CORAL's covariance gaps, …) is added to every env's loss, so the weighted mean of the K losses is
the objective's total loss and any optimizer (Adam, SAM, SAGE, …) can minimise it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..catalog import OBJECTIVES  # noqa: F401


def concat_forward(model, xs: list[torch.Tensor]):
    """(features, logits), each split back per env."""
    sizes = [len(x) for x in xs]
    features = model.featurizer(torch.cat(xs))
    logits = model.classifier(features)
    return list(torch.split(features, sizes)), list(torch.split(logits, sizes))


def env_weights(losses_like: list, weights) -> torch.Tensor:
    if weights is None:
        return torch.full((len(losses_like),), 1.0 / len(losses_like))
    w = torch.as_tensor(weights, dtype=torch.float32)
    return w / w.sum()


class Objective:
    """Base: no state, no extra parameters. ``hparams`` come from the recipe's ``objective:`` section."""

    def __init__(self, model, n_envs: int, cfg=None, n_classes: int | None = None):
        self.n_envs, self.n_classes = n_envs, n_classes
        self.hparams = dict(cfg.hparams) if cfg is not None and getattr(cfg, "hparams", None) else {}

    def hp(self, name: str, default):
        return type(default)(self.hparams.get(name, default))

    def losses(self, model, xs, ys, weights=None) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def after_step(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ERM(Objective):
    """Empirical risk: each env's mean cross-entropy (their weighted mean is the ERM loss)."""

    def losses(self, model, xs, ys, weights=None):
        _, logits = concat_forward(model, xs)
        return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])

