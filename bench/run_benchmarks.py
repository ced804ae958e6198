"""Benchmarks for `make bench` (not tests: timings vary by machine; the figures go into closing notes).

- `sage --help` wall time, median of 10 (target ≤ 0.3 s: heavy imports are lazy)
- quickstart wall time in an empty folder (target ≤ 60 s on 2 cores)
- quickstart target-env accuracy of ERM, SAM and SAGE at seed 0
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAGE = str(Path(sys.executable).parent / "sage")
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")


def timed(cmd, cwd=None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return elapsed, proc.stdout


def bench_help(n: int = 10) -> float:
    timed([SAGE, "--help"])  # warm the file cache
    return statistics.median(timed([SAGE, "--help"])[0] for _ in range(n))


def run_quickstart(*overrides: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        args = [a for o in overrides for a in ("--set", o)]
        elapsed, out = timed([SAGE, "run", QUICKSTART, *args], cwd=tmp)
    acc = float(re.search(r"accuracy: ([0-9.]+) \(final\)", out).group(1))
    return elapsed, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-accuracy", action="store_true", help="only the timings")
    args = parser.parse_args()
    rows = []
    help_s = bench_help()
    rows.append(("sage --help (median of 10)", f"{help_s:.3f} s", "≤ 0.3 s"))
    wall, sage_acc = run_quickstart()
    rows.append(("quickstart wall (SAGE, 400 steps)", f"{wall:.1f} s", "≤ 60 s"))
    if not args.skip_accuracy:
        rows.append(("quickstart target acc, SAGE seed 0", f"{sage_acc:.4f}", ""))
        for method in ("erm", "sam"):
            _, acc = run_quickstart(f"optimizer.method={method}", "optimizer.rho=null")
            rows.append((f"quickstart target acc, {method.upper()} seed 0", f"{acc:.4f}", ""))
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")


if __name__ == "__main__":
    main()
