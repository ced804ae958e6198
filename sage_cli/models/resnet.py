"""ResNet-50 (torchvision) with torchvision's weights (a tag, see :mod:`.weights`) or a local file, and DomainBed's
frozen-BatchNorm option."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import Classifier


class FrozenBNResNet(nn.Module):
    """A torchvision ResNet without its fc; with ``freeze_bn`` its BatchNorms stay in eval mode (their
    running statistics never move), as DomainBed does when fine-tuning."""

    def __init__(self, net: nn.Module, freeze_bn: bool):
        super().__init__()
        net.fc = nn.Identity()
        self.net, self.freeze_bn = net, freeze_bn

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x):
        return self.net(x)


def load_local_weights(net: nn.Module, path: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"ResNet weights file {file} does not exist (torchvision's resnet50 state dict expected)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, foreign formats
        raise UserError(f"cannot read ResNet weights {file}: {type(exc).__name__}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        raise UserError(f"{file} does not fit resnet50: missing {missing[:3]}, unexpected {unexpected[:3]}, "
                        f"wrong shape {wrong[:3]}")
    net.load_state_dict(state, strict=False)


def resnet50(input_shape, n_classes, cfg, classes=None) -> Classifier:
    from torchvision.models import resnet50 as tv_resnet50

    net = tv_resnet50(weights=None)
    if cfg.pretrained:
        from .weights import local_file

        load_local_weights(net, str(local_file(cfg).file))
    featurizer = FrozenBNResNet(net, cfg.freeze_bn)
    return Classifier(featurizer.train(), nn.Linear(2048, n_classes), 2048)
