"""Multi-task learning: data (NYU-v2, Cityscapes, embedded benchmarks), MTAN, losses, metrics, Δm, and the
aggregators that combine per-task gradients (SAGE composes with any of them). Their settings and registry are
in ``sage_cli/settings/aggregators.py``; ``benchmarks.py`` (Δm and the STL references) is torch-free."""

from __future__ import annotations

import importlib

_EXPORTS = {"CITYSCAPES": "benchmarks", "NYUV2": "benchmarks", "delta_m": "benchmarks"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
