"""``sage bench``: ERM, SAM and SAGE step times, SAGE's parts and peak memory on one model (heavy imports inside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import typer

from .cards import names as dataset_names
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
    precision: str = typer.Option("fp32", "--precision", help="fp32 | tf32 | bf16 (as training.precision)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A data root: time the real input pipeline on it (with --dataset)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=f"With --data: {' | '.join(dataset_names('domainbed').split())}."),
    workers: str = typer.Option("auto", "--workers", help="With --data: loader worker processes (auto: CPUs − 1)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line."),
):
    """Time ERM, SAM and SAGE steps on one model with random weights on random data: warm-up, interleaved
    repetitions, medians; SAGE's parts (per-distribution statistics, polar factors, second pass), peak memory,
    and the polar factors alone (one at a time, batched, and their error against the SVD).

    With ``--data ROOT --dataset NAME``: the input pipeline of a run on that folder instead — training images per
    second with the loader's workers and in the training process, evaluation images per second from the cache
    and by decoding, and a SAGE step including its loading both ways (``--batch``: images per domain, default 32;
    ``--image-size``: the first number, default 224)."""
    choices = {"--model": (model, MODEL_CHOICES), "--polar-dtype": (polar_dtype, ("float32", "bfloat16")),
               "--device": (device, ("cpu", "cuda")), "--precision": (precision, ("fp32", "tf32", "bf16")),
               "--polar": (polar, ("quintic", "cubic", "polar_express", "svd", "none"))}
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            _fail(f"{option} '{value}': choose from {', '.join(allowed)}")
    if image_size is not None and not all(8 <= side <= 4096 for side in image_size):
        _fail(f"--image-size {image_size[0]} {image_size[1]}: each side between 8 and 4096 pixels")
    if workers != "auto" and not (workers.isdigit()):
        _fail(f"--workers '{workers}': auto or a count >= 0")
    if (data is None) != (dataset is None):
        _fail("--data and --dataset go together: --data ROOT --dataset NAME")
    if data is not None:
        from types import SimpleNamespace

        from .catalog import DATASETS
        from .openmp import quiet_idle_threads

        folders = [n for n in DATASETS.names() if DATASETS.entry(n).kind == "dg" and not DATASETS.entry(n).in_memory]
        if dataset not in folders:
            _fail(f"--dataset '{dataset}': choose from {', '.join(sorted(folders))}")
        quiet_idle_threads(SimpleNamespace(name=dataset, workers=workers if workers == "auto" else int(workers)))
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is visible here")
    if data is not None:
        return _bench_data(data, dataset, model, image_size, batch, workers, steps, precision, device, as_json)
    from rich.progress import Progress

    from .speed import measure, workloads

    work = workloads.build(model, domains, batch, image_size, freeze_bn, device)
    if work.blocks and min(work.blocks) < 1:
        _fail(f"--batch {work.batch} gives a domain no image: use at least {work.K}")
    n_methods = 3 + (1 if work.mtl and agreement_every > 1 else 0)
    with Progress(transient=True) as bar:
        task = bar.add_task(f"timing {work.describe}", total=steps * n_methods)
        result = measure.run(work, steps, polar, ns_steps, polar_dtype, agreement_every if work.mtl else 1,
                             torch.device(device), progress=lambda: bar.advance(task), precision=precision)
    _print(result)
    if as_json:
        typer.echo(json.dumps(result))


def _bench_data(root, dataset, model, image_size, batch, workers, steps, precision, device, as_json):
    from rich.console import Console
    from rich.table import Table

    from .errors import UserError
    from .speed import data_bench

    if model not in data_bench.BACKBONES:
        _fail(f"--model '{model}' with --data: choose from {', '.join(data_bench.BACKBONES)}")
    console = Console(stderr=True)
    size = image_size[0] if image_size else 224
    try:
        result = data_bench.run(dataset, str(root), model, size, batch or 32, workers if workers == "auto" else int(workers),
                                max(steps, 10), precision, device, say=lambda m: console.print(m, markup=False))
    except UserError as exc:
        _fail(str(exc))
    table = Table(title=result["workload"] + f" · {result['device']} · {result['workers']} workers")
    for col in ("", "with workers", "in the training process / decoding", "ratio"):
        table.add_column(col, justify="left" if not col else "right")
    r = result
    table.add_row("training images/s", f"{r['train_images_per_second']:,.0f}",
                  f"{r['train_images_per_second_inprocess']:,.0f}",
                  f"{r['train_images_per_second'] / r['train_images_per_second_inprocess']:.2f}×")
    table.add_row("SAGE step with its loading", f"{r['step_seconds_with_data']:.3f} s",
                  f"{r['step_seconds_with_data_inprocess']:.3f} s", f"{r['ratio_step_with_data']:.2f}")
    table.add_row("evaluation images/s: cache / decoding", f"{r['eval_images_per_second']:,.0f}",
                  f"{r['eval_images_per_second_decode']:,.0f}", f"{r['ratio_eval_cache_decode']:.1f}×")
    table.add_row("evaluation images/s: decoding by the workers (eval_cache: false)",
                  f"{r['eval_images_per_second_decode_workers']:,.0f}", f"{r['eval_images_per_second_decode']:,.0f}",
                  f"{r['eval_images_per_second_decode_workers'] / r['eval_images_per_second_decode']:.1f}×")
    Console().print(table)
    if as_json:
        typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    app.command()(bench)
