"""IIB: Invariant Information Bottleneck (Li et al. 2022), as in DomainBed.

Features pass through a variational bottleneck (μ, log σ²; z sampled by reparameterisation). An invariant
classifier predicts the class from z, an env-aware one from (z, env index); the loss is both risks, plus
λ_β·KL(q(z|x) ‖ N(0, I)) and λ_inv·(risk_inv − risk_env)². The model's head becomes the bottleneck's mean
followed by the invariant classifier, which is what evaluation uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Objective


class IIBHead(nn.Module):
    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.mu, self.logvar = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, features):  # prediction: the bottleneck's mean
        return self.classifier(self.mu(self.encoder(features)))


class IIB(Objective):
    name = "iib"

    def __init__(self, model, n_envs, cfg=None, n_classes=None):
        super().__init__(model, n_envs, cfg, n_classes)
        device = next(model.parameters()).device
        dim = model.n_features
        model.classifier = IIBHead(dim, n_classes).to(device)
        self.env_classifier = nn.Linear(dim + 1, n_classes).to(device)

    def parameters(self):
        return list(self.env_classifier.parameters())

    def losses(self, model, xs, ys, weights=None):
        head = model.classifier
        x, y = torch.cat(xs), torch.cat(ys)
        h = head.encoder(model.featurizer(x))
        mu, logvar = head.mu(h), head.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        env = torch.cat([torch.full((len(v), 1), float(k), device=x.device) for k, v in enumerate(ys)])
        inv = F.cross_entropy(head.classifier(z), y, reduction="none")
        env_risk = F.cross_entropy(self.env_classifier(torch.cat([z, env], 1)), y, reduction="none")
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        gap = (inv.mean() - env_risk.mean()) ** 2
        per_sample = inv + env_risk + self.hp("lambda_beta") * kl
        parts = per_sample.split([len(v) for v in ys])
        return torch.stack([p.mean() for p in parts]) + self.hp("lambda_inv_risks") * gap

    def state_dict(self):
        return {"env_classifier": self.env_classifier.state_dict()}

    def load_state_dict(self, state):
        self.env_classifier.load_state_dict(state["env_classifier"])
