"""Step time of SAGE-LS (and SAMO-LS, SAGE-SAMO-LS) against LS on the full-width MTAN (3 NYU-v2 tasks),
measured in one run:
`python bench/mtl_step_ratio.py [--size 64 128] [--batch 2] [--steps 5]`. CPU-sized images by default."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sage_cli.mtl.aggregators import LS  # noqa: E402
from sage_cli.mtl.losses import task_loss  # noqa: E402
from sage_cli.mtl.models import MTAN  # noqa: E402
from sage_cli.optim import SAGE, SinglePassOptimizer  # noqa: E402
from sage_cli.optim.pertask import SAGESAMO, SAMO  # noqa: E402

TASKS = ("segmentation", "depth", "normal")


def step_times(method: str, size, batch: int, steps: int) -> list[float]:
    torch.manual_seed(0)
    model = MTAN(TASKS, 13)
    agg = LS(3).bind(model.shared_parameters())
    if method == "sage":
        opt = SAGE(model.parameters(), torch.optim.Adam, rho=1e-4, gamma=1e-5, lr=1e-4, model=model, seed=0)
    elif method == "samo":
        opt = SAMO(model.parameters(), torch.optim.Adam, rho=1e-3, lr=1e-4, model=model, seed=0)
    elif method == "sage-samo":
        opt = SAGESAMO(model.parameters(), torch.optim.Adam, rho=1e-4, gamma=1e-5, lr=1e-4, model=model, seed=0)
    else:
        opt = SinglePassOptimizer(model.parameters(), torch.optim.Adam, lr=1e-4, model=model)
    opt.aggregator = agg
    x = torch.rand(batch, 3, *size)
    y = {"segmentation": torch.randint(0, 13, (batch, *size)), "depth": torch.rand(batch, 1, *size) + 0.1,
         "normal": torch.nn.functional.normalize(torch.randn(batch, 3, *size), dim=1)}

    def closure():
        out = model(x)
        return torch.stack([task_loss(t, out[t], y[t]) for t in TASKS])

    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.step(closure)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, nargs=2, default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    times = {m: statistics.median(step_times(m, args.size, args.batch, args.steps))
             for m in ("ls", "sage", "samo", "sage-samo")}
    print(f"MTAN (44.2 M params), {args.batch}×3×{args.size[0]}×{args.size[1]}, median of {args.steps} steps")
    for method, label in (("ls", "LS"), ("sage", "SAGE-LS"), ("samo", "SAMO-LS"), ("sage-samo", "SAGE-SAMO-LS")):
        ratio = f"   {times[method] / times['ls']:5.2f}× LS" if method != "ls" else ""
        print(f"{label:13s} {times[method] * 1000:8.1f} ms/step{ratio}")

if __name__ == "__main__":
    main()
