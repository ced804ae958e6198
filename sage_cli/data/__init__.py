"""Datasets, one registry entry each. An entry is a class with ``ENVIRONMENTS`` (names, known without
loading anything, so recipes can be checked cheaply), ``N_CLASSES``, ``INPUT_SHAPE`` and a constructor
``(root)`` that yields one dataset per environment in ``.datasets``."""

from ..catalog import DATASETS  # noqa: F401
