"""RSC: Representation Self-Challenging (Huang et al. 2020), as in DomainBed.

The feature dimensions with the largest gradient of the true-class score are muted (per sample, the top
``f_drop`` fraction), but only for the samples whose true-class confidence drops most when muted (the top
``b_drop`` fraction); the loss is the cross-entropy of the classifier on the muted features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Objective


def rsc_feature_mask(feature_grads: torch.Tensor, drop_factor: float) -> torch.Tensor:
    """1 where a feature's gradient is below its sample's (1 − drop_factor) percentile, else 0."""
    threshold = torch.quantile(feature_grads, 1 - drop_factor, dim=1, keepdim=True)
    return (feature_grads < threshold).float()


class RSC(Objective):
    name = "rsc"

    def losses(self, model, xs, ys, weights=None):
        f_drop, b_drop = self.hp("f_drop_factor"), self.hp("b_drop_factor")
        x, y = torch.cat(xs), torch.cat(ys)
        features = model.featurizer(x)
        logits = model.classifier(features)
        one_hot = F.one_hot(y, logits.shape[1]).float()
        grads = torch.autograd.grad((logits * one_hot).sum(), features, retain_graph=True)[0]
        mask_f = rsc_feature_mask(grads.detach(), f_drop)
        with torch.no_grad():
            muted = model.classifier(features * mask_f)
            changes = (F.softmax(logits, 1) * one_hot).sum(1) - (F.softmax(muted, 1) * one_hot).sum(1)
            mask_b = (changes < torch.quantile(changes, 1 - b_drop)).float().view(-1, 1)
        mask = torch.logical_or(mask_f.bool(), mask_b.bool()).float()
        per_sample = F.cross_entropy(model.classifier(features * mask), y, reduction="none")
        return torch.stack([part.mean() for part in per_sample.split([len(v) for v in ys])])
