"""MTL metrics as in the FAMO / Nash-MTL references; Δm and the STL references are in ``benchmarks.py``."""

from __future__ import annotations

import torch

from .benchmarks import CITYSCAPES, NYUV2, Benchmark, delta_m  # noqa: F401  (torch-free, for reports)


class ConfusionMatrix:
    """Segmentation metrics from a running confusion matrix (pixels labelled −1 are ignored)."""

    def __init__(self, n_classes: int, device="cpu"):
        self.n = n_classes
        self.matrix = torch.zeros(n_classes, n_classes, dtype=torch.long, device=device)  # where the labels are

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        keep = target >= 0
        idx = target[keep].long() * self.n + pred[keep].long()
        self.matrix += torch.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n).to(self.matrix.device)

    def miou(self) -> float:
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else 0.0

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum().double() / total) if total > 0 else 0.0


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Mean absolute and relative error over valid pixels (depth 0 means no measurement)."""
    valid = target != 0
    diff = (pred - target)[valid].abs()
    if diff.numel() == 0:
        return 0.0, 0.0
    return float(diff.mean()), float((diff / target[valid].abs()).mean())


def normal_angles(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between predicted and true unit normals (N, 3, H, W), at valid (non-zero) pixels."""
    valid = target.abs().sum(1) > 0
    cos = (pred * target).sum(1).clamp(-1, 1)[valid]
    return torch.rad2deg(torch.acos(cos))


def normal_metrics(angles: torch.Tensor) -> dict[str, float]:
    if angles.numel() == 0:
        return {"mean": 0.0, "median": 0.0, "within_11.25": 0.0, "within_22.5": 0.0, "within_30": 0.0}
    a = angles.double()
    return {"mean": float(a.mean()), "median": float(a.median()),
            "within_11.25": 100 * float((a < 11.25).double().mean()),
            "within_22.5": 100 * float((a < 22.5).double().mean()),
            "within_30": 100 * float((a < 30).double().mean())}
