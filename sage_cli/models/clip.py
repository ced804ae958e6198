"""CLIP image encoders through open_clip (the paper's DG backbone is CLIP ViT-B/16).

``tuning``: ``full`` trains every parameter; ``linear`` (linear probing) only the head; ``vpt`` the head and
learnable prompt tokens, the encoder frozen (Jia et al., "Visual Prompt Tuning", ECCV 2022): ``prompt_tokens``
tokens put after the class token, once before the first block (``shallow``) or a fresh set at every block
(``deep``, replacing the previous block's), initialised uniform(±√(6 / (3·patch² + width))) as VPT's code does
(KMnP/vpt ``src/models/vit_prompt/vit.py``). open_clip applies ``ln_pre`` to the embeddings; the prompts enter
after it, so they are free tokens of the transformer's input; they are dropped before pooling.

``pretrained`` is an open_clip tag (e.g. ``openai``; ``sage run`` downloads it into the Hugging Face cache
first, see :mod:`.weights`) or a local weights file; ``null`` means random initialisation (tests use the tiny
``ViT-Tiny-16`` config shipped here). The head is linear, or zero-shot: initialised from the text
embeddings of class-name prompts, so training starts from CLIP's zero-shot classifier.
"""

from __future__ import annotations

import math
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


class PromptedTransformer(nn.Module):
    """open_clip's ViT transformer with VPT prompt tokens (its blocks run as before, frozen by the caller).
    ``block_rules`` gives it a per-block rule, so SAGE's one-backward engine covers the prompts."""

    def __init__(self, transformer: nn.Module, tokens: int, deep: bool, width: int, patch: int):
        super().__init__()
        if not getattr(transformer, "batch_first", True):
            raise UserError("backbone.tuning: vpt needs open_clip's batch-first transformer (open_clip >= 2.24)")
        self.inner, self.tokens = transformer, tokens
        bound = math.sqrt(6.0 / (3 * patch * patch + width))
        self.depth = len(transformer.resblocks) if deep else 1
        for i in range(self.depth):  # own parameters (not a ParameterList): the per-block rule claims them
            setattr(self, f"prompt{i}", nn.Parameter(torch.empty(tokens, width).uniform_(-bound, bound)))

    def prompt(self, i: int) -> nn.Parameter:
        return getattr(self, f"prompt{i}")

    def run(self, x, insert):
        """The blocks over ``x`` with each prompt put in by ``insert(x, prompt, end)``; prompts dropped after."""
        x = insert(x, self.prompt(0), 1)
        for i, block in enumerate(self.inner.resblocks):
            if 0 < i < self.depth:
                x = insert(x, self.prompt(i), 1 + self.tokens)
            x = block(x)
        return torch.cat([x[:, :1], x[:, 1 + self.tokens:]], 1)

    def forward(self, x, attn_mask=None):
        def insert(x, prompt, end):
            return torch.cat([x[:, :1], prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1), x[:, end:]], 1)

        return self.run(x, insert)


def tune(model: nn.Module, visual: nn.Module, cfg) -> None:
    """Freeze what ``cfg.tuning`` leaves out and add VPT's prompts; ``model`` is the whole CLIP model."""
    tuning = getattr(cfg, "tuning", "full")  # a plain namespace of the older settings: full fine-tuning
    if tuning == "full":
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if tuning == "vpt":
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise UserError(f"backbone.tuning: vpt needs a ViT image tower; {cfg.model} is not one")
        patch = visual.conv1.kernel_size[0]
        visual.transformer = PromptedTransformer(visual.transformer, cfg.prompt_tokens, cfg.prompt_depth == "deep",
                                                 visual.class_embedding.shape[-1], patch)


def clip(input_shape, n_classes: int, cfg, classes=None) -> Classifier:
    """open_clip's image tower (``backbone.model``, ViT-B/16 by default: the paper's) and a linear head; the
    parameters ``backbone.tuning`` trains (the rest frozen)."""
    arch = cfg.model or "ViT-B-16"
    model = _create(arch, cfg.pretrained)
    tune(model, model.visual, cfg)
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

