"""RotatedDigits (test env 75°) accuracy of every objective (with Adam) and every optimizer (with ERM),
over trial seeds, as a markdown table: `python bench/methods_table.py [--seeds 0 1 2] [--steps 400]`.

Runs in-process (no MLflow) at the quickstart settings; slow on CPU (minutes per method).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sage_cli.objectives import OBJECTIVES  # noqa: E402
from sage_cli.optim import METHODS  # noqa: E402
from sage_cli.recipe import load_recipe  # noqa: E402
from sage_cli.train.dg import select_training_domain, train_dg  # noqa: E402


def run(values: dict, seed: int, steps: int) -> tuple[float, float]:
    # SAGE keeps the quickstart's ρ and γ; every other method gets its own default radius
    radius = {} if values["optimizer.method"] == "sage" else {"optimizer.rho": None}
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml",
                         {**values, **radius, "training.seed": seed, "training.steps": steps})
    result = train_dg(recipe)
    test = recipe.dataset.test_envs[0]
    final = result.history[-1].metrics[f"env{test}_in_acc"]
    selected = select_training_domain(result.history, result.data.train_envs).metrics[f"env{test}_in_acc"]
    return final, selected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [(f"{o} + adam", {"objective.name": o, "optimizer.method": "erm"}) for o in OBJECTIVES.names()]
    rows += [(f"erm + {m}", {"objective.name": "erm", "optimizer.method": m}) for m in METHODS.names() if m != "erm"]
    if args.only:
        rows = [r for r in rows if r[0] in args.only]
    print(f"| method | final acc (mean ± s.e.) | training-domain validation | seconds/run |  seeds {args.seeds}, {args.steps} steps")
    print("|---|---|---|---|")
    for name, values in rows:
        finals, selected, t0 = [], [], time.perf_counter()
        for seed in args.seeds:
            f, s = run(values, seed, args.steps)
            finals.append(100 * f)
            selected.append(100 * s)
        per_run = (time.perf_counter() - t0) / len(args.seeds)

        def fmt(v):
            se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0
            return f"{statistics.mean(v):.1f} ± {se:.1f}"

        print(f"| {name} | {fmt(finals)} | {fmt(selected)} | {per_run:.0f} |", flush=True)


if __name__ == "__main__":
    main()
