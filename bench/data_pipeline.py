"""`sage bench --data` on a generated PACS-layout folder of 227² JPEGs (PACS's image size), part of `make bench`.

The images are smooth random fields with noise (JPEG-compressed like photos, not flat colours: decoding and
augmenting them costs what real images cost). Prints the table and writes the JSON line to --out.

    python bench/data_pipeline.py [--per-class 30] [--workers 2] [--model small_cnn] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAGE = str(Path(sys.executable).parent / "sage")
ENVS = ("art_painting", "cartoon", "photo", "sketch")  # PACS's envs (DomainBed's folder names)
CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def make_pacs_like(root: Path, per_class: int, size: int = 227, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "PACS"
    for env in ENVS:
        for c, cls in enumerate(CLASSES):
            folder = base / env / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
                smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
                pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape) + 8 * c, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-class", type=int, default=30, help="images per class and env (PACS: ~350)")
    parser.add_argument("--workers", default="2")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32, help="images per domain per step (DomainBed: 32)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--root", help="an existing folder to reuse (generated there if empty)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-data-pipeline.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        if not (root / "PACS").is_dir():
            print(f"generating {4 * len(CLASSES) * args.per_class} JPEGs of 227² in {root} …", flush=True)
            make_pacs_like(root, args.per_class)
        cmd = [SAGE, "bench", "--data", str(root), "--dataset", "pacs", "--model", args.model,
               "--workers", args.workers, "--image-size", str(args.image_size), str(args.image_size),
               "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device,
               "--precision", args.precision, "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        lines = proc.stdout.strip().splitlines()
        print("\n".join(lines[:-1]))
        result = json.loads(lines[-1])
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"step with loading, workers / in process: {result['ratio_step_with_data']:.2f}; "
          f"evaluation, cache / decoding: {result['ratio_eval_cache_decode']:.1f}×  (→ {args.out})")


if __name__ == "__main__":
    main()
