"""Tiny image trees in DomainBed's exact folder layouts, generated on the fly."""

from pathlib import Path

import numpy as np
from PIL import Image

from sage_cli.catalog import card, folder_cards


def make_tree(root: Path, name: str, classes=("dog", "giraffe", "house"), per_class=4, size=24, seed=0) -> Path:
    spec = card(name)
    rng = np.random.default_rng(seed)
    base = root / spec.directory
    for e, env in enumerate(spec.envs):
        for c, cls in enumerate(classes):
            folder = base / env / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # class-dependent colour so a model can learn something, env-dependent noise
                pixels = np.clip(rng.normal(60 + 70 * c, 20 + 10 * e, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg" if i % 2 == 0 else folder / f"{i:03d}.png")
    return base


def make_all(root: Path) -> Path:
    for name in [c.name for c in folder_cards()]:
        make_tree(root, name)
    return root
