"""`make bench`'s step-cost table: `sage bench --json` on the standard set, written into the README's
performance section (between its markers) with the machine it ran on.

    python bench/speed_table.py [--device cuda] [--models small_cnn resnet50 vit_b16 mtan] [--no-readme]
                                [--add-json FILE ...]   # rows from earlier `sage bench --json` runs, as they are
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAGE = str(Path(sys.executable).parent / "sage")
README = ROOT / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
STANDARD = {"small_cnn": ["--domains", "5"], "resnet50": ["--domains", "3", "--batch", "12"],
            "vit_b16": ["--domains", "3", "--batch", "12"], "mtan": []}


def measure(model: str, device: str, extra: list[str]) -> dict:
    cmd = [SAGE, "bench", "--model", model, "--device", device, "--json", *STANDARD.get(model, []), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    print(proc.stdout.rsplit("\n", 2)[0], flush=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict) -> str:
    s = r["step_seconds"]
    mem = r.get("ratio_memory_sage_sam")
    every = f"{r['ratio_sage_every_sam']:.2f}" if "ratio_sage_every_sam" in r else "—"
    return (f"| {r['workload']} | {r['per_domain_path']} | {s['erm']:.3f} | {s['sam']:.3f} | {s['sage']:.3f} | "
            f"{r['ratio_sage_sam']:.2f} | {r['ratio_sage_erm']:.2f} | {r['ratio_polar_erm']:.2f} | "
            f"{r['overhead_beyond_polar']:.2f} | {r['ratio_sage_floor']:.2f} | {every} | "
            f"{'—' if mem is None else f'{mem:.2f}'} |")


def table(results: list[dict]) -> str:
    head = ("| workload | per-domain path | ERM s | SAM s | SAGE s | SAGE/SAM | SAGE/ERM | r = NS/ERM | "
            "(SAGE−SAM−NS)/SAM | SAGE/floor | SAGE-LS every 4 / SAM-LS | memory SAGE/SAM |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    polar = ["", "Polar factors of all of a model's matrices (random gradients of their shapes), float32: one at a "
                 "time by the direct iteration (SAGE before) → as SAGE computes them now (same shapes batched, wide "
                 "ones through the Gram matrix), and the error of the latter against the SVD:", ""]
    for r in results:
        polar.append(f"- {r['model']}: {r['polar_matrices']} matrices, {r['polar_loop_seconds']:.3f} s → "
                     f"{r['polar_batched_seconds']:.3f} s, ‖Q − Q_svd‖/‖Q_svd‖ ≤ {r['polar_error_vs_svd']:.2f}")
    machine = results[0]["machine"] + f" ({results[0]['device']})"
    return "\n".join([f"Measured by `make bench` on {machine}; medians of interleaved steps in one process, "
                      "random weights and data.", "", head, *map(_row, results), *polar])


def write_readme(text: str, start: str = START, end: str = END) -> None:
    """Replace what stands between the README's ``start`` and ``end`` markers with ``text``."""
    readme = README.read_text()
    if start not in readme or end not in readme:
        raise SystemExit(f"README.md has no {start} … {end} section")
    before, rest = readme.split(start, 1)
    after = rest.split(end, 1)[1]
    README.write_text(f"{before}{start}\n{text}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(STANDARD))
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--add-json", nargs="*", default=[], help="files whose last line is a sage bench --json result")
    parser.add_argument("extra", nargs="*", help="passed to sage bench (after --)")
    args = parser.parse_args()
    results = [measure(m, args.device, args.extra) for m in args.models]
    results += [json.loads(Path(f).read_text().strip().splitlines()[-1]) for f in args.add_json]
    text = table(results)
    print(text)
    if not args.no_readme:
        write_readme(text)
        print(f"wrote the performance section of {README}")


if __name__ == "__main__":
    main()
