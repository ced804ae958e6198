"""Muon baseline: torch.optim.Muon on the 2-D weight matrices, Adam on everything else.

torch.optim.Muon accepts 2-D parameters only, so conv kernels (4-D), biases and norms go to Adam.
``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's RMS, so one learning rate serves both.
"""

from __future__ import annotations

import torch


class MuonWithAdam(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 ns_steps: int = 5, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        matrices = [p for g in self.param_groups for p in g["params"] if p.ndim == 2]
        others = [p for g in self.param_groups for p in g["params"] if p.ndim != 2]
        self.optimizers = []
        if matrices:
            self.optimizers.append(torch.optim.Muon(matrices, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                    ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw"))
        if others:
            self.optimizers.append(torch.optim.Adam(others, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                                                    fused=True))
        # schedulers see (and scale) the groups of both inner optimizers
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
