"""Tiny NYU-v2 / Cityscapes trees in the references' .npy layout (32 × 64), with ignored labels, missing depth
and missing normals, as real data has."""

from pathlib import Path

import numpy as np


def make_dense(root: Path, name: str, n_train: int = 4, n_val: int = 2, h: int = 32, w: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_classes, label_dir = (13, "label") if name == "nyuv2" else (7, "label_7")
    for split, n in (("train", n_train), ("val", n_val)):
        base = root / name / split
        for folder in ["image", label_dir, "depth"] + (["normal"] if name == "nyuv2" else []):
            (base / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(base / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
            label = rng.integers(0, n_classes, (h, w)).astype(np.float32)
            label[:4] = -1  # ignored pixels
            np.save(base / label_dir / f"{i}.npy", label)
            depth = (rng.random((h, w, 1)) * 5 + 0.5).astype(np.float32)
            depth[:, :8] = 0  # no measurement
            np.save(base / "depth" / f"{i}.npy", depth)
            if name == "nyuv2":
                normal = rng.normal(size=(h, w, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[-4:] = 0  # no measurement
                np.save(base / "normal" / f"{i}.npy", normal)
    return root
