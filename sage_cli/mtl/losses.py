"""Task losses as in the references: NLL with −1 ignored, L1 depth and 1 − cosine normals over valid pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(log_probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(log_probs, label, ignore_index=-1)


def _valid(target: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) mask of pixels with a measurement (an all-zero target means none)."""
    return (target.abs().sum(1, keepdim=True) != 0).to(target.dtype)


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = _valid(target)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1)


def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mask = _valid(target)
    return 1 - ((pred * target) * mask).sum() / mask.sum().clamp_min(1)


LOSSES = {"segmentation": segmentation_loss, "depth": depth_loss, "normal": normal_loss}


def task_loss(task: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return LOSSES.get(task, F.cross_entropy)(pred, target)
