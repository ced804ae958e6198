"""Backbones, one registry entry each: ``builder(input_shape, n_classes, cfg, classes) -> Classifier``.

Every model is a ``Classifier``: a ``featurizer`` (inputs → features) and a ``classifier`` (features →
logits), the split DomainBed's objectives (CORAL, MMD, DANN, RSC, …) work on.
"""

from torch import nn

from ..catalog import MODELS  # noqa: F401


class Classifier(nn.Module):
    def __init__(self, featurizer: nn.Module, classifier: nn.Module, n_features: int):
        super().__init__()
        self.featurizer, self.classifier, self.n_features = featurizer, classifier, n_features

    def forward(self, x):
        return self.classifier(self.featurizer(x))

