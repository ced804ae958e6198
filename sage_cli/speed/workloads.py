"""The models ``sage bench`` times, with random weights on random data, and the optimizers it compares.

DG models get K domains' blocks of one batch (the trainer's layout, so SAGE takes the path training would take);
MTAN gets one batch and three NYU-v2 tasks, the methods composed with LS (LS, SAM-LS, SAGE-LS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

MODELS = ("small_cnn", "resnet50", "vit_b16", "vit_tiny", "mtan")
# (K, images per step) by default: the quickstart's 5 × 32, the paper's DG batch of 12 over 3 domains, MTAN's 2
DEFAULTS = {"small_cnn": (5, 160), "resnet50": (3, 12), "vit_b16": (3, 12), "vit_tiny": (3, 12), "mtan": (3, 2)}
MTL_TASKS = ("segmentation", "depth", "normal")


@dataclass
class Workload:
    name: str
    make_model: Callable[[], torch.nn.Module]
    closure_for: Callable[[torch.nn.Module], Callable[[], torch.Tensor]]
    K: int
    batch: int
    blocks: list[int] | None = None  # DG: the domains' block sizes
    mtl: bool = False
    describe: str = ""
    extra: dict = field(default_factory=dict)


def _dg_model(name: str, freeze_bn: bool):
    if name == "small_cnn":
        from ..models.cnn import small_cnn

        return (1, 28, 28), 10, lambda: small_cnn((1, 28, 28), 10)
    if name == "resnet50":
        from ..models.resnet import resnet50

        cfg = SimpleNamespace(pretrained=None, freeze_bn=freeze_bn)
        return (3, 224, 224), 7, lambda: resnet50((3, 224, 224), 7, cfg)
    from ..models.clip import clip

    arch, size = ("ViT-B-16", 224) if name == "vit_b16" else ("ViT-Tiny-16", 32)
    cfg = SimpleNamespace(model=arch, pretrained=None, head="linear", prompt="")
    return (3, size, size), 7, lambda: clip((3, size, size), 7, cfg)


def _quiet_open_clip():
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that random init loads no weights


def build(name: str, K: int | None = None, batch: int | None = None, image_size: tuple[int, int] | None = None,
          freeze_bn: bool = True, device: str = "cpu", seed: int = 0) -> Workload:
    K0, batch0 = DEFAULTS[name]
    K, batch = K or K0, batch or batch0
    g = torch.Generator().manual_seed(seed)
    if name == "mtan":
        return _mtan(batch, image_size or (288, 384), device, g)
    _quiet_open_clip()
    shape, n_classes, factory = _dg_model(name, freeze_bn)
    if image_size is not None:
        shape = (shape[0], *image_size)
    sizes = [batch // K + (1 if k < batch % K else 0) for k in range(K)]
    xs = [torch.randn(n, *shape, generator=g).to(device) for n in sizes]
    ys = [torch.randint(0, n_classes, (n,), generator=g).to(device) for n in sizes]

    def closure_for(model):
        def closure():
            logits = model(torch.cat(xs)).split(sizes)
            return torch.stack([F.cross_entropy(z, y) for z, y in zip(logits, ys)])
        return closure

    def make_model():
        torch.manual_seed(seed)
        return factory().to(device).train()

    return Workload(name, make_model, closure_for, K, batch, sizes,
                    describe=f"{name}, K = {K} domains, {batch} images of {'×'.join(map(str, shape))}")


def _mtan(batch, size, device, g) -> Workload:
    from ..mtl.losses import task_loss
    from ..mtl.models import MTAN

    x = torch.rand(batch, 3, *size, generator=g).to(device)
    y = {"segmentation": torch.randint(0, 13, (batch, *size), generator=g).to(device),
         "depth": (torch.rand(batch, 1, *size, generator=g) + 0.1).to(device),
         "normal": F.normalize(torch.randn(batch, 3, *size, generator=g), dim=1).to(device)}

    def closure_for(model):
        def closure():
            out = model(x)
            return torch.stack([task_loss(t, out[t], y[t]) for t in MTL_TASKS])
        return closure

    def make_model():
        torch.manual_seed(0)
        return MTAN(MTL_TASKS, 13).to(device).train()

    return Workload("mtan", make_model, closure_for, 3, batch, None, mtl=True,
                    describe=f"MTAN, 3 NYU-v2 tasks, {batch} images of 3×{size[0]}×{size[1]}")


def optimizers(work: Workload, polar: str, ns_steps: int, polar_dtype: str, agreement_every: int) -> dict:
    """method → (make optimizer over a model, steps per repetition). SAGE-LS with ``agreement_every`` n is
    timed over n consecutive steps (one of which refreshes S)."""
    from ..optim import SAGE, SAM, SinglePassOptimizer

    sage = dict(rho=1e-4, gamma=1e-5, polar=polar, ns_steps=ns_steps, polar_dtype=polar_dtype)
    base = dict(lr=1e-4, fused=True)  # a run's base optimizer (settings.methods: Method.base_kwargs)

    def with_aggregator(make):
        if not work.mtl:
            return make

        def made(model):
            from ..mtl.aggregators import LS

            opt = make(model)
            opt.aggregator = LS(work.K).bind(model.shared_parameters())
            return opt
        return made

    methods = {
        "erm": (lambda m: SinglePassOptimizer(m.parameters(), torch.optim.Adam, model=m, **base), 1),
        "sam": (lambda m: SAM(m.parameters(), torch.optim.Adam, rho=0.05, model=m, **base), 1),
        "sage": (lambda m: SAGE(m.parameters(), torch.optim.Adam, model=m, seed=0, **sage, **base), 1),
    }
    if work.mtl and agreement_every > 1:
        methods[f"sage_every{agreement_every}"] = (
            lambda m: SAGE(m.parameters(), torch.optim.Adam, model=m, seed=0,
                           agreement_every=agreement_every, **sage, **base), agreement_every)
    return {k: (with_aggregator(make), n) for k, (make, n) in methods.items()}
