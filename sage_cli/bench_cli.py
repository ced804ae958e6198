"""``sage bench``: ERM, SAM and SAGE step times, SAGE's parts and peak memory on one model (heavy imports inside)."""

from __future__ import annotations

import json
from typing import Optional, Tuple

import typer

from .errors import exit_with as _fail

MODEL_CHOICES = ("small_cnn", "resnet50", "vit_b16", "vit_tiny", "mtan")


def _mb(n) -> str:
    return "—" if n is None else f"{n / 2**20:,.0f} MB"


def _print(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    sec = result["step_seconds"]
    table = Table(title=f"{result['workload']} · {result['machine']} · {result['device']}")
    for col in ("method", "step", "× ERM", "× SAM", "peak memory"):
        table.add_column(col, justify="left" if col == "method" else "right")
    labels = {"erm": "ERM", "sam": "SAM", "sage": "SAGE"}
    for name, seconds in sec.items():
        label = labels.get(name, "SAGE")
        if result["model"] == "mtan":
            label = "LS" if name == "erm" else f"{label}-LS"
        if name.startswith("sage_every"):
            label += f", agreement_every {name.removeprefix('sage_every')}"
        table.add_row(label, f"{seconds:.3f} s", f"{seconds / sec['erm']:.2f}", f"{seconds / sec['sam']:.2f}",
                      _mb(result["peak_memory_bytes"].get(name)))
    console.print(table)
    parts = result["sage_parts_seconds"]
    console.print(f"SAGE: per-distribution statistics {parts['statistics']:.3f} s "
                  f"({result['per_domain_path']} path{': ' + result['per_domain_reason'] if result['per_domain_reason'] else ''}), "
                  f"polar factors {parts['polar']:.3f} s ({result['polar']}, {result['ns_steps']} steps, "
                  f"{result['polar_dtype']}), second pass {parts['second_pass']:.3f} s", soft_wrap=True)
    console.print(f"SAGE/SAM {result['ratio_sage_sam']:.2f} · SAGE/ERM {result['ratio_sage_erm']:.2f} · "
                  f"r = polar/ERM {result['ratio_polar_erm']:.2f} · (SAGE − SAM − polar)/SAM "
                  f"{result['overhead_beyond_polar']:.2f} · SAGE / floor ({result['floor_passes']:.2f} ERM steps) "
                  f"{result['ratio_sage_floor']:.2f}", soft_wrap=True)
    extra = [f"{k.replace('_seconds', '').replace('polar_', '')} {v:.3f} s" for k, v in result.items()
             if k.startswith("polar_") and k.endswith("_seconds")]
    console.print(f"polar factors of all {result['polar_matrices']} matrices: " + " · ".join(extra) +
                  f" · error vs SVD {result['polar_error_vs_svd']:.2e}", soft_wrap=True)


def bench(
    model: str = typer.Option("small_cnn", "--model", help="small_cnn | resnet50 | vit_b16 | vit_tiny | mtan"),
    domains: Optional[int] = typer.Option(None, "--domains", min=2, help="K training domains (DG; default 5 for small_cnn, else 3)."),
    batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Images per step, over all domains (default: 160 small_cnn, 12 resnet50/ViT, 2 mtan)."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed repetitions per method (interleaved; medians)."),
    polar: str = typer.Option("quintic", "--polar", help="quintic | cubic | polar_express | svd | none"),
    ns_steps: int = typer.Option(5, "--ns-steps", min=1, help="Newton–Schulz steps."),
    polar_dtype: str = typer.Option("float32", "--polar-dtype", help="float32 | bfloat16"),
    agreement_every: int = typer.Option(4, "--agreement-every", min=1, help="mtan: also time SAGE-LS with S refreshed every n steps (1: not)."),
    image_size: Optional[Tuple[int, int]] = typer.Option(None, "--image-size", help="H W (default: 224 224; mtan 288 384)."),
    freeze_bn: bool = typer.Option(True, "--freeze-bn/--train-bn", help="resnet50: BatchNorm statistics frozen (DomainBed) or in training mode."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line."),
):
    """Time ERM, SAM and SAGE steps on one model with random weights on random data: warm-up, interleaved
    repetitions, medians; SAGE's parts (per-distribution statistics, polar factors, second pass), peak memory,
    and the polar factors alone (one at a time, batched, and their error against the SVD)."""
    choices = {"--model": (model, MODEL_CHOICES), "--polar-dtype": (polar_dtype, ("float32", "bfloat16")),
               "--device": (device, ("cpu", "cuda")),
               "--polar": (polar, ("quintic", "cubic", "polar_express", "svd", "none"))}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            _fail(f"{option} '{value}': choose from {', '.join(allowed)}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is visible here")
    from rich.progress import Progress

    from .speed import measure, workloads

    work = workloads.build(model, domains, batch, image_size, freeze_bn, device)
    if work.blocks and min(work.blocks) < 1:
        _fail(f"--batch {work.batch} gives a domain no image: use at least {work.K}")
    n_methods = 3 + (1 if work.mtl and agreement_every > 1 else 0)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"timing {work.describe}", total=steps * n_methods)
        result = measure.run(work, steps, polar, ns_steps, polar_dtype, agreement_every if work.mtl else 1,
                             torch.device(device), progress=lambda: bar.advance(task))
    _print(result)
    if as_json:
        typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command()(bench)
