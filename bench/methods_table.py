"""RotatedDigits (test env 75°) accuracy of every objective (with Adam) and every optimizer (with ERM), over
trial seeds: an experiment run by `sage sweep` and tabled by `sage report` (training-domain and oracle).

    python bench/methods_table.py [--seeds 0 1 2] [--steps 400] [--only irm sam] [--max-parallel 2] [--dir D]

Slow on CPU (about 20 minutes on 2 cores for every row and 3 seeds). SAGE keeps the quickstart's ρ and γ;
every other method its own default radius.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sweep_report import sweep_and_report  # noqa: E402
from sage_cli.catalog import METHODS, OBJECTIVES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where the store and sweep folders go (default: a temp folder)")
    args = parser.parse_args()
    methods = {f"{o}+adam": {"objective.name": o, "optimizer.method": "erm"} for o in OBJECTIVES.names()}
    methods |= {f"erm+{m}": {"optimizer.method": m, **({} if m == "sage" else {"optimizer.rho": None})}
                for m in METHODS.names() if m != "erm"}
    if args.only:
        methods = {k: v for k, v in methods.items() if k in args.only or k.split("+")[-1] in args.only
                   or k.split("+")[0] in args.only}
    spec = {"recipes": [str(ROOT / "recipes" / "quickstart.yaml")], "methods": methods, "seeds": args.seeds,
            "test_envs": [5], "overrides": {"training": {"steps": args.steps}}}
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-methods-"))
    print(sweep_and_report("bench_methods", spec, workdir, args.max_parallel,
                           ["--selection", "all", "--format", "md"]))


if __name__ == "__main__":
    main()
