"""Invariance penalties added to ERM: IRM, VREx (per-env risks), MMD and CORAL (feature distributions).

Hyper-parameters follow DomainBed's defaults (``settings/objectives.py``); a recipe sets them under ``objective.hparams``.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .base import Objective, concat_forward


class _Annealed(Objective):
    """A penalty weight of 1 for the first ``anneal_iters`` steps, then ``lambda`` (IRM, VREx)."""

    def __init__(self, model, n_envs, cfg=None, n_classes=None):
        super().__init__(model, n_envs, cfg, n_classes)
        self.weight_after = self.hp("lambda")
        self.anneal_iters = self.hp("anneal_iters")
        self.update_count = 0

    @property
    def penalty_weight(self) -> float:
        return self.weight_after if self.update_count >= self.anneal_iters else 1.0

    def after_step(self, step):
        self.update_count += 1

    def state_dict(self):
        return {"update_count": self.update_count}

    def load_state_dict(self, state):
        self.update_count = int(state.get("update_count", 0))


def irm_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IRMv1 (Arjovsky et al.): ‖∇_s CE(s·logits, y)|_{s=1}‖², estimated unbiasedly as the product of the
    gradients on the two halves of the batch (DomainBed)."""
    scale = torch.ones((), device=logits.device, requires_grad=True)
    g1 = torch.autograd.grad(F.cross_entropy(logits[0::2] * scale, y[0::2]), [scale], create_graph=True)[0]
    g2 = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return g1 * g2


class IRM(_Annealed):
    name = "irm"

    def losses(self, model, xs, ys, weights=None):
        _, logits = concat_forward(model, xs)
        w = self.penalty_weight
        return torch.stack([F.cross_entropy(z, y) + w * irm_penalty(z, y) for z, y in zip(logits, ys)])


class VREx(_Annealed):
    """V-REx (Krueger et al.): ERM + λ·Var_k(L_k)."""

    name = "vrex"

    def losses(self, model, xs, ys, weights=None):
        _, logits = concat_forward(model, xs)
        risks = torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])
        variance = ((risks - risks.mean()) ** 2).mean()
        return risks + self.penalty_weight * variance


def gaussian_kernel_mmd(x: torch.Tensor, y: torch.Tensor,
                        gammas=(0.001, 0.01, 0.1, 1, 10, 100, 1000)) -> torch.Tensor:
    """MMD² with a sum of Gaussian kernels exp(−γ‖a − b‖²) (DomainBed's MMD)."""
    def k(a, b):
        d = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-g * d) for g in gammas)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def coral_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CORAL (Sun & Saenko): mean squared gap of the feature means plus of the feature covariances."""
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cx, cy = x - mean_x, y - mean_y
    cov_x, cov_y = cx.T @ cx / (len(x) - 1), cy.T @ cy / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cov_x - cov_y).pow(2).mean()


class _FeatureMatching(Objective):
    distance = staticmethod(gaussian_kernel_mmd)

    def losses(self, model, xs, ys, weights=None):
        features, logits = concat_forward(model, xs)
        risks = torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])
        pairs = list(itertools.combinations(range(len(features)), 2))
        if not pairs:
            return risks
        penalty = sum(self.distance(features[i], features[j]) for i, j in pairs) / len(pairs)
        return risks + self.hp("gamma") * penalty


class MMD(_FeatureMatching):
    name = "mmd"
    distance = staticmethod(gaussian_kernel_mmd)


class CORAL(_FeatureMatching):
    name = "coral"
    distance = staticmethod(coral_distance)
