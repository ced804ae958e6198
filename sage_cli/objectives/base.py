"""The objective interface, ERM, and the one concatenated forward every objective starts from."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Base: no state, no extra parameters. ``cfg`` is the recipe's ``objective:`` section (its settings
    class in ``settings/objectives.py``, where the defaults are); without one, the defaults of the entry ``name``."""

    name = "erm"
    # True when ``losses`` are the envs' mean losses over their own blocks of one concatenated forward and
    # nothing else: the per-env gradients then come from one backward (sage_cli.optim.per_domain)
    separable = False

    def __init__(self, model, n_envs: int, cfg=None, n_classes: int | None = None):
        from ..settings.objectives import OBJECTIVES

        self.n_envs, self.n_classes = n_envs, n_classes
        cfg = cfg if cfg is not None else OBJECTIVES.get(self.name)()
        self.hparams = cfg.hparams.model_dump(by_alias=True)

    def hp(self, name: str):
        return self.hparams[name]

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

    separable = True

    def losses(self, model, xs, ys, weights=None):
        _, logits = concat_forward(model, xs)
        return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])

