"""A small CNN for the embedded benchmarks (DomainBed's MNIST_CNN, narrower)."""

from __future__ import annotations

from torch import nn

from . import Classifier


def small_cnn(input_shape, n_classes: int, cfg=None, classes=None) -> Classifier:
    channels = input_shape[0]

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    featurizer = nn.Sequential(
        *block(channels, 16, 1), *block(16, 32, 2), *block(32, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(featurizer, nn.Linear(64, n_classes), 64)
