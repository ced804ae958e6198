"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossWeighting, setting


class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023): weights z = softmax(ξ) on log-losses, normalised by c = Σ z_k / L_k; after
    each update ξ takes one Adam step (lr ``famo_w_lr``, weight decay ``famo_gamma``) towards the tasks whose
    log-loss fell least."""

    wants_losses_after_update = True

    def __init__(self, n_tasks, cfg=None, seed=0):
        super().__init__(n_tasks, cfg, seed)
        self.logits = torch.zeros(n_tasks, requires_grad=True)
        self.min_losses = torch.zeros(n_tasks)
        self.optimizer = torch.optim.Adam([self.logits], lr=float(setting(cfg, "famo_w_lr")),
                                          weight_decay=float(setting(cfg, "famo_gamma")))

    def total_loss(self, losses):
        z = F.softmax(self.logits, -1).to(losses).detach()
        d = losses - self.min_losses.to(losses) + 1e-8
        c = (z / d).sum().detach()
        self.last_weights = z
        return (d.log() * z / c).sum()

    def after_update(self, losses_before, losses_after):
        delta = (losses_before.detach().cpu() - self.min_losses + 1e-8).log() - \
                (losses_after.detach().cpu() - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            grad = torch.autograd.grad(F.softmax(self.logits, -1), self.logits, grad_outputs=delta)[0]
        self.optimizer.zero_grad()
        self.logits.grad = grad
        self.optimizer.step()

    def state_dict(self):
        return {**super().state_dict(), "logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
