"""Datasets, one registry entry each. An entry is a class with ``ENVIRONMENTS`` (names, known without
loading anything, so recipes can be checked cheaply), ``N_CLASSES``, ``INPUT_SHAPE`` and a constructor
``(root)`` that yields one dataset per environment in ``.datasets``."""

from ..registry import Registry

DATASETS: Registry = Registry("dataset")

from . import digits, domainbed  # noqa: E402,F401  (registers the datasets)
