"""CLIP image encoders through open_clip (the paper's DG backbone is CLIP ViT-B/16).

``pretrained`` is an open_clip tag (e.g. ``openai``; ``sage run`` downloads it into the Hugging Face cache
first, see :mod:`.weights`) or a local weights file; ``null`` means random initialisation (tests use the tiny
``ViT-Tiny-16`` config shipped here). The head is linear, or zero-shot: initialised from the text
embeddings of class-name prompts, so training starts from CLIP's zero-shot classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import Classifier

CONFIG_DIR = Path(__file__).parent / "clip_configs"


class NormalizedEncoder(nn.Module):
    """CLIP's image tower with L2-normalised output, the space the zero-shot head lives in."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x):
        return nn.functional.normalize(self.visual(x), dim=-1)


def _create(arch: str, pretrained: str | None):
    import open_clip

    from .weights import clip_weights

    open_clip.add_model_config(CONFIG_DIR)
    if arch not in open_clip.list_models():
        raise UserError(f"unknown open_clip model '{arch}'; e.g. ViT-B-16, ViT-Tiny-16")
    if not pretrained:
        return open_clip.create_model(arch, pretrained=None)
    weights = clip_weights(arch, pretrained, download=False)  # `sage run` fetched a tag's file already
    try:
        return open_clip.create_model(arch, pretrained=str(weights.file), force_quick_gelu=weights.quick_gelu)
    except Exception as exc:  # foreign or truncated files: torch/safetensors raise many types
        raise UserError(f"cannot load CLIP weights {weights.file} into {arch} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None


@torch.no_grad()
def zero_shot_weights(model, arch: str, classes: list[str], template: str) -> torch.Tensor:
    import open_clip

    tokenizer = open_clip.get_tokenizer(arch)
    prompts = [template.format(c=c.replace("_", " ")) for c in classes]
    text = nn.functional.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    return model.logit_scale.exp() * text


def clip(input_shape, n_classes: int, cfg, classes=None) -> Classifier:
    """open_clip's image tower (``backbone.model``, ViT-B/16 by default: the paper's) and a linear head."""
    arch = cfg.model or "ViT-B-16"
    model = _create(arch, cfg.pretrained)
    encoder = NormalizedEncoder(model.visual)
    dim = model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None else None
    dim = dim or encoder(torch.zeros(1, *input_shape)).shape[-1]
    head = nn.Linear(dim, n_classes)
    if cfg.head == "zeroshot":
        if not classes or len(classes) != n_classes:
            raise UserError("backbone.head: zeroshot needs the dataset's class names")
        with torch.no_grad():
            head.weight.copy_(zero_shot_weights(model, arch, classes, cfg.prompt))
            head.bias.zero_()
    return Classifier(encoder, head, dim)

