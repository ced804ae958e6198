"""Kernel launches and host syncs of one optimizer step, counted (`python bench/step_ops.py`; what is counted:
``sage_cli/speed/ops.py``)."""

from __future__ import annotations

import argparse
import json

from sage_cli.speed.ops import count

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--train-bn", action="store_true", help="resnet50: BatchNorm in training mode (exact path)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="smaller inputs: the same ops")
    args = parser.parse_args()
    sizes = {"image_size": tuple(args.image_size)} if args.image_size else {}
    print(json.dumps({args.model + (" train-bn" if args.train_bn else ""): count(args.model, not args.train_bn, **sizes)}))
