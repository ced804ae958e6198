"""Multi-task learning: data (NYU-v2, Cityscapes, embedded benchmarks), MTAN, losses, metrics, Δm, and the
aggregators that combine per-task gradients (SAGE composes with any of them)."""

from .metrics import CITYSCAPES, NYUV2, delta_m  # noqa: F401
