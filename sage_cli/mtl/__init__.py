"""Multi-task learning: data (NYU-v2, Cityscapes, embedded benchmarks), MTAN, losses, metrics, Δm, and the
aggregators that combine per-task gradients (SAGE composes with any of them). ``settings.py`` holds the
aggregators' settings and registry, torch-free; everything else imports torch."""

from __future__ import annotations

import importlib

_EXPORTS = {"CITYSCAPES": "benchmarks", "NYUV2": "benchmarks", "delta_m": "benchmarks", "AGGREGATORS": "settings"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
