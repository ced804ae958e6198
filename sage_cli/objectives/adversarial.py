"""Domain-adversarial objectives: DANN (Ganin et al. 2016) and CDANN (Li et al. 2018).

A discriminator predicts each image's training env from its features through a gradient-reversal layer,
so one loss trains the discriminator to tell envs apart and the featurizer (with weight −λ) to make them
indistinguishable. The discriminator's parameters join the optimizer's (SAGE perturbs them too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Objective, concat_forward


class GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


class DANN(Objective):
    name = "dann"
    conditional = False

    def __init__(self, model, n_envs, cfg=None, n_classes=None):
        super().__init__(model, n_envs, cfg, n_classes)
        device = next(model.parameters()).device
        width, dim = self.hp("mlp_width"), model.n_features
        self.discriminator = nn.Sequential(nn.Linear(dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                           nn.Linear(width, n_envs)).to(device)
        self.class_embeddings = nn.Embedding(n_classes, dim).to(device) if self.conditional else None
        self.strength = self.hp("lambda")

    def parameters(self):
        modules = [self.discriminator] + ([self.class_embeddings] if self.conditional else [])
        return [p for m in modules for p in m.parameters()]

    def losses(self, model, xs, ys, weights=None):
        features, logits = concat_forward(model, xs)
        out = []
        for k, (f, z, y) in enumerate(zip(features, logits, ys)):
            h = reverse_gradient(f, self.strength)
            if self.conditional:
                h = h + self.class_embeddings(y)
            env = torch.full((len(y),), k, dtype=torch.long, device=y.device)
            out.append(F.cross_entropy(z, y) + F.cross_entropy(self.discriminator(h), env))
        return torch.stack(out)

    def state_dict(self):
        state = {"discriminator": self.discriminator.state_dict()}
        if self.conditional:
            state["class_embeddings"] = self.class_embeddings.state_dict()
        return state

    def load_state_dict(self, state):
        self.discriminator.load_state_dict(state["discriminator"])
        if self.conditional:
            self.class_embeddings.load_state_dict(state["class_embeddings"])


class CDANN(DANN):
    """Class-conditional DANN: the discriminator sees features plus a learned embedding of the class."""

    name = "cdann"
    conditional = True
