"""Every Table 2 row (experiments/table2_mtl.yaml) on the embedded MTL quickstart (two digits side by side):
mean accuracy over the last ``report_epochs`` epochs and seconds per run, as a markdown table.

    python bench/mtl_table.py [--seeds 0] [--only LS SAMO-LS]

Runs in-process (no MLflow). The rows' own settings apply (SAMO's and F-MTL's ρ); SAGE rows keep the
quickstart's ρ and γ.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sage_cli.mtl.train import final_average, train_mtl  # noqa: E402
from sage_cli.recipe import load_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = yaml.safe_load((ROOT / "experiments" / "table2_mtl.yaml").read_text())["methods"]
    if args.only:
        rows = {name: values for name, values in rows.items() if name in args.only}
    print(f"| solver | mean acc (%) | seconds/run |  mtl_quickstart, seeds {args.seeds}")
    print("|---|---|---|")
    for name, values in rows.items():
        accs, t0 = [], time.perf_counter()
        for seed in args.seeds:
            recipe = load_recipe(ROOT / "recipes" / "mtl_quickstart.yaml", {**values, "training.seed": seed})
            history = train_mtl(recipe).history
            accs.append(final_average(history, "mean_acc", recipe.training.report_epochs))
        per_run = (time.perf_counter() - t0) / len(args.seeds)
        spread = f" ± {statistics.stdev(accs) / len(accs) ** 0.5:.2f}" if len(accs) > 1 else ""
        print(f"| {name} | {statistics.mean(accs):.2f}{spread} | {per_run:.0f} |", flush=True)


if __name__ == "__main__":
    main()
