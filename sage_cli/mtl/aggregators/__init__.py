"""The MTL solvers of Table 2, one short module each, in two kinds (``base.py``): loss weightings
(``ls``, ``stl``, ``si``, ``rlw``, ``dwa``, ``uw``, ``famo``) and gradient aggregators (``mgda``, ``pcgrad``,
``imtlg``, ``cagrad``, ``fairgrad``, ``graddrop``, ``nashmtl``, ``moco``). Their settings and registration are
in ``settings/aggregators.py``. Names resolve on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Aggregator": "base", "LossWeighting": "base", "GradientAggregator": "base",
    "LS": "ls", "STL": "stl", "SI": "si", "RLW": "rlw", "DWA": "dwa", "UW": "uw", "FAMO": "famo",
    "MGDA": "mgda", "min_norm_weights": "mgda", "PCGrad": "pcgrad", "IMTLG": "imtlg", "FairGrad": "fairgrad",
    "GradDrop": "graddrop", "NashMTL": "nashmtl", "CAGrad": "cagrad", "cagrad_direction": "cagrad", "MoCo": "moco",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
