"""Per-epoch test metrics of the MTL benchmarks: task accuracies (embedded digits) and the dense metrics of
Table 2 (mIoU, pixel accuracy, depth errors, normal angles) with Δm against the STL references."""

from __future__ import annotations

import torch

from .metrics import ConfusionMatrix, delta_m, depth_errors, normal_angles, normal_metrics


@torch.no_grad()
def classification_metrics(model, batches, device, tasks) -> dict[str, float]:
    """Each task's accuracy (percent) and their mean, over the test samples in ``batches``."""
    model.eval()
    # counted on the device and read once at the end (as the DG evaluation): no host wait per batch
    correct = torch.zeros(len(tasks), dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        n += len(x)
        out = model(x.to(device))
        for i, t in enumerate(tasks):
            correct[i] += (out[t].argmax(1) == y[t].to(device)).sum()
    metrics = {f"{t}_acc": 100 * c / n for t, c in zip(tasks, correct.tolist())}
    metrics["mean_acc"] = sum(metrics.values()) / len(tasks)
    model.train()
    return metrics


@torch.no_grad()
def dense_metrics(model, batches, device, n_classes: int, benchmark, rel_scale: float) -> dict[str, float]:
    """Table 2's metrics and Δm. ``rel_scale``: Table 2 states Cityscapes' relative depth error in percent
    (STL 27.77) and NYU-v2's as a fraction (0.2780)."""
    model.eval()
    # the targets go to the device, not the outputs to the host: 5 channels instead of 17 (NYU-v2), and the
    # argmax over the classes and the metrics' arithmetic run where the outputs are (the same ops, any device)
    cm, angles = ConfusionMatrix(n_classes, device), []
    abs_sum = rel_sum = count = 0.0
    for x, y in batches:
        out = model(x.to(device))
        y = {k: v.to(device) for k, v in y.items()}
        cm.update(out["segmentation"].argmax(1), y["segmentation"])
        valid = (y["depth"] != 0).sum().item()
        if valid:
            a, r = depth_errors(out["depth"], y["depth"])
            abs_sum, rel_sum, count = abs_sum + a * valid, rel_sum + r * valid, count + valid
        if "normal" in y:
            angles.append(normal_angles(out["normal"], y["normal"]))
    metrics = {"miou": 100 * cm.miou(), "pixacc": 100 * cm.pixel_accuracy(),
               "abs": abs_sum / max(count, 1), "rel": rel_scale * rel_sum / max(count, 1)}
    if angles:
        metrics.update(normal_metrics(torch.cat(angles)))
    metrics["delta_m"] = delta_m([metrics[m] for m in benchmark.metrics], benchmark.stl, benchmark.higher_is_better)
    model.train()
    return metrics
