"""The GPU figures of the input-pipeline work in one prepared run: `sage bench` for resnet50 and vit_b16 at
fp32 / tf32 / bf16, `sage bench --data` on a generated PACS-layout folder, and a 300-step `sage run` of
recipes/pacs.yaml (CLIP ViT-B/16, random weights: nothing can be downloaded there) on that folder with 0, 4
and 8 loader workers. Each result is appended to OUT/gpu_figures.jsonl as soon as it exists, most wanted
first, so a run cut short still returns what it measured; OUT/gpu_figures.md is the summary.

On a machine with PyTorch but no route to PyPI, carry the other dependencies as wheels (``make gpu-wheels``
downloads bench/gpu-wheels.txt into .whl/ for CPython 3.12 on x86-64), then run there, in the repository:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 python3 bench/gpu_figures.py --out $OUT

    python bench/gpu_figures.py --quick --device cpu --out /tmp/g   # the same stages, small, on a CPU

``--data-benches vit_b16:tf32,resnet50:bf16`` runs only those ``sage bench --data`` stages: the rest of the grid
when a first run brought back everything else (docs/gpu_figures_h200.jsonl holds both runs of 2026-12-04).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data_pipeline import CLASSES, ENVS, make_pacs_like  # noqa: E402
from bench.speed_table import STANDARD  # noqa: E402

SAGE = [sys.executable, "-m", "sage_cli"]  # no console script where sage is on PYTHONPATH only


def _sage(args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*SAGE, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    return proc, time.perf_counter() - t0


def _failure(proc: subprocess.CompletedProcess | None) -> dict:
    """{} for a command that succeeded, else {"error": why} (the end of its stderr)."""
    if proc is not None and proc.returncode == 0:
        return {}
    return {"error": "timed out" if proc is None else proc.stderr.strip()[-1500:]}


def _record(out: Path, row: dict) -> None:
    with open(out / "gpu_figures.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row)[:400], flush=True)


def bench(out: Path, stage: str, args: list[str], timeout: float) -> None:
    proc, wall = _sage(["bench", *args, "--json"], timeout)
    row = {"stage": stage, "args": args, "wall_seconds": round(wall, 1), **_failure(proc)}
    if "error" not in row:
        row["result"] = json.loads(proc.stdout.strip().splitlines()[-1])
    _record(out, row)


def data_bench(out: Path, data: Path, model: str, extra: list[str], label: str = "") -> None:
    """`sage bench --data` on the generated PACS folder with 8 loader workers."""
    bench(out, f"sage bench --data, {model}{label}, 8 workers",
          ["--data", str(data), "--dataset", "pacs", "--model", model, "--workers", "8", *extra], 300)


def train(out: Path, data: Path, workers: int, steps: int, device: str, sets: list[str], timeout: float) -> None:
    """One `sage run` of recipes/pacs.yaml: wall time, the run's own duration and its final metrics (the
    same for every worker count: a batch's content does not depend on it). Its store and checkpoints stay
    beside the data (``data``), not in ``out``: only the figures travel back."""
    store = f"sqlite:///{data / 'runs.db'}"
    overrides = [f"dataset.root={data}", "backbone.pretrained=null", f"training.steps={steps}",
                 f"training.checkpoint_freq={max(1, steps // 3)}", f"dataset.workers={workers}",
                 f"training.device={device}", f"tracking.uri={store}", f"training.output_dir={data / 'runs'}", *sets]
    proc, wall = _sage(["run", "recipes/pacs.yaml", "--force", *[a for o in overrides for a in ("--set", o)]],
                       timeout)
    row = {"stage": f"sage run, {workers} workers", "steps": steps, "workers": workers,
           "wall_seconds": round(wall, 1), **_failure(proc)}
    if "error" not in row:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=store)
        run = max((r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])),
                  key=lambda r: r.info.start_time)
        row["run_seconds"] = round((run.info.end_time - run.info.start_time) / 1000, 1)
        row["metrics"] = {k: v for k, v in run.data.metrics.items() if k.endswith("_acc")}
        row["tags"] = {k: v for k, v in run.data.tags.items()
                       if k in ("sage.device", "sage.precision", "sage.workers", "sage.per_domain_path")}
    _record(out, row)


def summary(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "gpu_figures.jsonl").read_text().splitlines()]
    lines = ["| stage | figures |", "|---|---|"]
    for r in rows:
        if "error" in r:
            figures = "failed: " + r["error"].splitlines()[-1][:200] if r["error"] else "failed"
        elif "result" in r and "step_seconds" in r["result"]:
            s = r["result"]["step_seconds"]
            figures = (f"ERM {s['erm']:.4f} s · SAM {s['sam']:.4f} s · SAGE {s['sage']:.4f} s · SAGE/SAM "
                       f"{r['result']['ratio_sage_sam']:.2f} · path {r['result']['per_domain_path']}")
        elif "result" in r:
            d = r["result"]
            figures = (f"train img/s {d['train_images_per_second']:,.0f} (in process "
                       f"{d['train_images_per_second_inprocess']:,.0f}) · eval img/s {d['eval_images_per_second']:,.0f} "
                       f"(decoding {d['eval_images_per_second_decode']:,.0f}) · SAGE step with loading "
                       f"{d['step_seconds_with_data']:.3f} s (in process {d['step_seconds_with_data_inprocess']:.3f} s)")
        elif "steps" not in r:
            figures = f"{r['wall_seconds']} s"
        else:
            figures = (f"{r['steps']} steps: {r['run_seconds']} s in the run, {r['wall_seconds']} s with start-up · "
                       + " ".join(f"{k} {v:.4f}" for k, v in sorted(r["metrics"].items()) if k.startswith("env")))
        lines.append(f"| {r['stage']} | {figures} |")
    (out / "gpu_figures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_figures.jsonl and gpu_figures.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small_cnn benches and a ViT-Tiny run on 32² images: a check of the stages")
    parser.add_argument("--per-class", type=int, default=40, help="generated images per class and env")
    parser.add_argument("--steps", type=int, default=300, help="steps of each sage run")
    parser.add_argument("--data-benches", metavar="MODEL:PRECISION,…",
                        help="only `sage bench --data` for these pairs, in this order (e.g. vit_b16:tf32,resnet50:bf16): "
                             "the rest of the grid when a first run has the other stages")
    args = parser.parse_args()
    pairs = [p.split(":") for p in args.data_benches.split(",")] if args.data_benches else []
    if not all(len(p) == 2 for p in pairs):
        parser.error("--data-benches: MODEL:PRECISION pairs separated by commas")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_figures.jsonl").write_text("")
    dev = ["--device", args.device]
    if pairs:
        with tempfile.TemporaryDirectory() as tmp:
            make_pacs_like(Path(tmp), args.per_class)
            for model, precision in pairs:
                data_bench(out, Path(tmp), model, ["--precision", precision, *dev], f", {precision}")
        return summary(out)
    if args.quick:  # every stage in about a minute: small_cnn benches, a ViT-Tiny run, 32² images, one timed step
        models, precisions, size, data_model = ["small_cnn"], ["fp32", "bf16"], ["--image-size", "32", "32"], "small_cnn"
        sets, per_class, steps = ["backbone.model=ViT-Tiny-16", "dataset.image_size=32"], min(args.per_class, 4), 6
        timed = ["--steps", "1", "--batch", "12"]
    else:
        models, precisions, size, data_model = ["resnet50", "vit_b16"], ["fp32", "tf32", "bf16"], [], "resnet50"
        sets, per_class, steps, timed = [], args.per_class, args.steps, []
    for precision in precisions:  # the step costs first: they are the most wanted
        for model in models:
            bench(out, f"sage bench {model} {precision}",
                  ["--model", model, *STANDARD.get(model, []), *timed, *size, "--precision", precision, *dev], 300)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        print(f"generating {len(ENVS) * len(CLASSES) * per_class} JPEGs of 227² …", flush=True)
        make_pacs_like(data, per_class)  # data/PACS/…; the runs' store and folders go beside it
        data_bench(out, data, data_model, [*size, *dev, *(["--batch", "4", "--steps", "2"] if args.quick else [])])
        image_size = "32" if args.quick else "224"  # recipes/pacs.yaml's; built once, so no run pays for it
        proc, wall = _sage(["datasets", "prepare", "pacs", "--root", str(data), "--image-size", image_size], 300)
        _record(out, {"stage": "sage datasets prepare pacs (evaluation cache)", "wall_seconds": round(wall, 1),
                      **_failure(proc)})
        for workers in (8, 4, 0):
            train(out, data, workers, steps, args.device, sets, 600)
    summary(out)


if __name__ == "__main__":
    main()
