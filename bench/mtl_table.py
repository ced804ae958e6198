"""Every Table 2 row (experiments/table2_mtl.yaml) on the embedded MTL quickstart (two digits side by side):
an experiment run by `sage sweep` and tabled by `sage report` (mean accuracy over the last ``report_epochs``
epochs, mean ± s.e. over seeds).

    python bench/mtl_table.py [--seeds 0] [--only LS SAMO-LS] [--max-parallel 2] [--dir D]

The rows' own settings apply (SAMO's and F-MTL's ρ); SAGE rows keep the quickstart's ρ and γ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sweep_report import sweep_and_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--max-parallel", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where the store and sweep folders go (default: a temp folder)")
    args = parser.parse_args()
    methods = yaml.safe_load((ROOT / "experiments" / "table2_mtl.yaml").read_text())["methods"]
    if args.only:
        methods = {name: values for name, values in methods.items() if name in args.only}
    spec = {"recipes": [str(ROOT / "recipes" / "mtl_quickstart.yaml")], "methods": methods, "seeds": args.seeds}
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-mtl-"))
    print(sweep_and_report("bench_mtl", spec, workdir, args.max_parallel, ["--format", "md"]))


if __name__ == "__main__":
    main()
