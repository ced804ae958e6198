"""Fish (Shi et al. 2022): inter-domain gradient matching by a first-order meta-update, as in DomainBed.

Each step clones the network, takes one inner step per training env in turn, then moves the network a
fraction ``meta_lr`` of the way to the clone: θ ← θ + meta_lr (θ̃ − θ). The inner steps use the recipe's
optimizer (Adam, SAM, SAGE, …, built afresh each step as DomainBed does), so Fish combines with any of them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .base import Objective


class Fish(Objective):
    name = "fish"
    owns_update = True

    def losses(self, model, xs, ys, weights=None):  # used for evaluation-style calls only
        logits = model(torch.cat(xs)).split([len(x) for x in xs])
        return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])

    def update(self, model, xs, ys, weights, make_optimizer):
        inner = copy.deepcopy(model)
        inner_opt = make_optimizer(inner)
        losses = []
        for x, y in zip(xs, ys):
            losses.append(inner_opt.step(lambda x=x, y=y: F.cross_entropy(inner(x), y)).reshape(()))
        meta_lr = self.hp("meta_lr")
        with torch.no_grad():
            inner_state = inner.state_dict()
            for name, value in model.state_dict().items():
                target = inner_state[name]
                if value.is_floating_point():
                    value.add_(target - value, alpha=meta_lr)
                else:
                    value.copy_(target)
        self.inner_stats = dict(inner_opt.stats)
        return torch.stack(losses)
