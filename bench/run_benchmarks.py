"""Benchmarks for `make bench` (not tests: timings vary by machine; the figures go into closing notes).

- `sage --help` wall time, median of 10 (target ≤ 0.3 s: heavy imports are lazy)
- quickstart wall time in an empty folder (target ≤ 60 s on 2 cores)
- quickstart target-env accuracy of ERM, SAM and SAGE at seed 0
- a short `sage run`'s time from its last line to its end, through the entry point (which skips the shutdown's
  collections: sage_cli/shutdown.py) and through the bare app, interleaved, medians of 3
- `--dry-run` of a 1,000-job sweep (target ≤ 2 s)
- submitting 1,000 jobs to SLURM as arrays, held so none runs, then cancelled (target ≤ 10 s; needs a
  cluster: scripts/slurm-up.sh)
"""

from __future__ import annotations

import argparse
import os
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
    env = {**os.environ, "SAGE_SWEEPS": str(Path(cwd) / "sweeps")} if cwd else None
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
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


def bench_exit(rows: list, reps: int = 3) -> None:
    entry = [sys.executable, "-m", "sage_cli"]
    bare = [sys.executable, "-c", "from sage_cli.cli import app; app(prog_name='sage')"]  # no leave_quickly()
    run = ["run", QUICKSTART, "--set", "training.steps=20", "--set", "training.checkpoint_freq=10", "--force"]
    tails = {"entry": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SAGE_SWEEPS": str(Path(tmp) / "sweeps")}
        for _ in range(reps):
            for name, cmd in (("entry", entry), ("bare", bare)):
                proc = subprocess.Popen(cmd + run, cwd=tmp, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                last = time.perf_counter()
                for _line in proc.stdout:
                    last = time.perf_counter()
                if proc.wait() != 0:
                    raise SystemExit(f"{' '.join(cmd + run)} failed")
                tails[name].append(time.perf_counter() - last)
    entry_s, bare_s = (statistics.median(tails[k]) for k in ("entry", "bare"))
    rows.append(("sage run: last line to exit (entry point)", f"{entry_s:.2f} s", f"bare app: {bare_s:.2f} s"))


THOUSAND = ["ablate", QUICKSTART, "--rho", ",".join(f"{i}e-4" for i in range(1, 11)),
            "--gamma", ",".join(f"{i}e-5" for i in range(1, 11)), "--seeds", ",".join(map(str, range(10)))]


def bench_sweeps(rows: list) -> None:
    import json
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        elapsed, out = timed([SAGE, *THOUSAND, "--dry-run"], cwd=tmp)
        assert out.strip().splitlines()[-1].startswith("1000 jobs"), out[-200:]
        rows.append(("dry run of a 1,000-job sweep", f"{elapsed:.2f} s", "≤ 2 s"))
        if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
            rows.append(("submit 1,000 jobs to SLURM", "skipped", "no cluster"))
            return
        # the MLflow store is created first (a one-time cost, timed apart), then 1,000 jobs are submitted
        # held (sbatch --hold), so the figure is submission alone and nothing runs
        uri = f"sqlite:///{tmp}/mlflow.db"
        store_s, _ = timed([sys.executable, "-c", "from sage_cli.track.mlflow_run import prepare_store; "
                            f"prepare_store('{uri}', 'quickstart')"], cwd=tmp)
        rows.append(("create a fresh MLflow sqlite store", f"{store_s:.2f} s", "once per store"))
        held = ["--launcher", "slurm", "--set", "slurm.mem_gb=1", "--set", "slurm.additional_parameters={hold: true}"]
        elapsed, out = timed([SAGE, *THOUSAND, *held], cwd=tmp)
        [state] = list(Path(tmp).glob("sweeps/*/sweep.json"))
        sweep = json.loads(state.read_text())["id"]
        timed([SAGE, "cancel", sweep], cwd=tmp)
        rows.append(("submit 1,000 jobs to SLURM (arrays)", f"{elapsed:.2f} s", "≤ 10 s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-accuracy", action="store_true", help="only the timings")
    args = parser.parse_args()
    rows = []
    bench_sweeps(rows)
    help_s = bench_help()
    bench_exit(rows)
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
