"""`sage report` over 1,000 finished runs of 20 checkpoints each: from a sqlite store (target ≤ 5 s) and through
a local `mlflow server` on the same store.

    python bench/report_speed.py [--runs 1000] [--checkpoints 20] [--no-server]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def fill(path: Path, n_runs: int, checkpoints: int) -> str:
    from mlflow.tracking import MlflowClient
    from report_fixtures import add_run

    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench")
    rng = random.Random(0)
    for i in range(n_runs):
        label, env, seed, hp = ["ERM", "SAM", "SAGE", "IRM"][i % 4], (i // 4) % 6, (i // 24) % 3, f"h{i // 72}"
        rows = [(step * 300, {**{f"env{e}_{k}_acc": rng.random() for e in range(6) for k in ("in", "out")},
                              "target_alignment": rng.random(), "loss": rng.random()}) for step in range(checkpoints)]
        add_run(client, exp, dataset="rotated_digits", label=label, hparams=hp, seed=seed, test_envs=(env,),
                rows=rows, sweep="bench-1")
    return uri


def timed(args, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "sage_cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - t0, proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        t0 = time.perf_counter()
        uri = fill(db, args.runs, args.checkpoints)
        print(f"filled {args.runs} runs × {args.checkpoints} checkpoints in {time.perf_counter() - t0:.0f} s")
        for fmt in ("text", "json"):
            seconds, proc = timed(["report", "--tracking-uri", uri, "--selection", "all", "--format", fmt], tmp)
            assert proc.returncode == 0, proc.stderr
            print(f"sage report --selection all --format {fmt} (sqlite): {seconds:.2f} s")
        seconds, proc = timed(["report", "--tracking-uri", uri, "--selection", "all", "--out", "out"], tmp)
        print(f"sage report --selection all --out (every format and figure, sqlite): {seconds:.2f} s")
        if args.no_server:
            return
        from report_fixtures import mlflow_server

        with mlflow_server(uri, tmp, workers=2) as url:
            seconds, proc = timed(["report", "--tracking-uri", url, "--selection", "all", "--format", "json"], tmp)
        assert proc.returncode == 0, proc.stderr
        print(f"sage report --selection all --format json (mlflow server on 127.0.0.1): {seconds:.2f} s")


if __name__ == "__main__":
    main()
