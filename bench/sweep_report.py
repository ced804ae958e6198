"""Shared by the table benchmarks: an experiment file run by `sage sweep`, then tabled by `sage report`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sage(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "sage_cli", *args], cwd=cwd, text=True, capture_output=True,
                          env={**env, "PYTHONPATH": str(ROOT), "SAGE_SWEEPS": str(cwd / "sweeps"), "COLUMNS": "200"})


def sweep_and_report(name: str, spec: dict, workdir: Path, max_parallel: int, report_args: list[str]) -> str:
    """Write ``spec`` as an experiment file in ``workdir``, run it (local launcher), return the report."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "experiment": name, **spec}, sort_keys=False))
    t0 = time.perf_counter()
    proc = sage(["sweep", str(path), "--max-parallel", str(max_parallel)], workdir)
    if proc.returncode != 0:
        sys.exit(f"sage sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"<!-- {name}: sweep took {time.perf_counter() - t0:.0f} s in {workdir} -->", file=sys.stderr)
    proc = sage(["report", "--experiment", name, *report_args], workdir)
    if proc.returncode != 0:
        sys.exit(f"sage report failed: {proc.stderr}")
    return proc.stdout
