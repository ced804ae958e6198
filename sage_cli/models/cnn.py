"""A small CNN for the embedded benchmarks: DomainBed's MNIST_CNN layout (conv → ReLU → GroupNorm(8)), narrower.

GroupNorm normalises each sample by itself. A BatchNorm over the concatenated batch (what this model had
before) makes every sample's output depend on the other domains' samples, so SAGE's per-domain gradients could
not come from one backward (``sage_cli.optim.per_domain``); BatchNorm with per-domain statistics was tried as
well and lost on the unseen domain (quickstart target accuracy 0.48 against 0.84 for this layout), since the
test domain is then normalised by statistics no training domain was normalised by.
"""

from __future__ import annotations

from torch import nn

from . import Classifier


def small_cnn(input_shape, n_classes: int, cfg=None, classes=None) -> Classifier:
    channels = input_shape[0]

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.ReLU(), nn.GroupNorm(8, c_out)]

    featurizer = nn.Sequential(
        *block(channels, 16, 1), *block(16, 32, 2), *block(32, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(featurizer, nn.Linear(64, n_classes), 64)
