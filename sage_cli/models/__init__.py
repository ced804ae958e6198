"""Backbones, one registry entry each: ``builder(input_shape, n_classes, cfg) -> nn.Module``."""

from ..registry import Registry

MODELS: Registry = Registry("backbone")

from . import cnn  # noqa: E402,F401
