"""OpenMP's idle threads beside the loader's worker processes (torch-free: it must act before torch loads)."""

from __future__ import annotations

import os

from .catalog import DATASETS


def quiet_idle_threads(dataset) -> None:
    """Make idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, unless already set) when ``dataset`` (a
    recipe's section) is loaded by worker processes: spinning threads take the workers' CPUs (36 ms of CPU per
    image instead of 3.8, measured at 224²). Not otherwise: with nothing to share the CPUs with, sleeping
    threads only add wake-ups (the CPU quickstart took 42–47 s passive against 28–37 s by default here, a noisy
    2-run measurement). OpenMP reads the variable once, when torch loads."""
    if dataset.workers != 0 and not DATASETS.entry(dataset.name).in_memory:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
