"""The ``sage`` command line. Commands parse, call and print; heavy imports (torch, mlflow) happen inside
the commands so that ``sage --help`` stays instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError

app = typer.Typer(
    name="sage",
    help="Run, schedule and report SAGE (Spectral-Aware Gradient-Aligned Exploration) experiments.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(recipe: Path, overrides: list[str] | None, seed: int | None = None, test_env: int | None = None):
    from .recipe import load_recipe, parse_overrides

    values = parse_overrides(overrides)
    if seed is not None:
        values["training.seed"] = seed
    if test_env is not None:
        values["dataset.test_envs"] = [test_env]
    return load_recipe(recipe, values)


SET_HELP = "Override a recipe value, e.g. --set optimizer.rho=1e-5 (repeatable)."


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Trial seed (training.seed)."),
    test_env: Optional[int] = typer.Option(None, "--test-env", help="Held-out environment index."),
    restart: bool = typer.Option(False, "--restart", help="Discard an unfinished checkpoint instead of resuming."),
):
    """Train one recipe and record it as one MLflow run (an interrupted run resumes where it stopped)."""
    try:
        resolved = _load(recipe, set_, seed, test_env)
        from .errors import TrainingDiverged
        from .train.runner import run_recipe

        outcome = run_recipe(resolved, restart=restart)
    except UserError as exc:
        _fail(str(exc))
    except TrainingDiverged as exc:
        _fail(str(exc), code=1)
    envs = ",".join(map(str, resolved.dataset.test_envs))
    typer.echo(f"target env {envs} accuracy: {outcome.target_acc:.4f} (final), "
               f"{outcome.selected_target_acc:.4f} (training-domain validation)")
    typer.echo(f"mlflow run {outcome.run_id} FINISHED in {outcome.tracking_uri}")


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Check a recipe without running it; print its resolved form and hash."""
    try:
        resolved = _load(recipe, set_)
    except UserError as exc:
        _fail(str(exc))
    typer.echo(resolved.to_yaml().rstrip())
    typer.echo(f"# ok: {recipe} · hash {resolved.hash()}")


@app.command()
def datasets(
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default: $SAGE_DATA)."),
    verify: bool = typer.Option(False, "--verify", help="Open every image to find unreadable ones (slow)."),
):
    """Which DomainBed datasets are present under the data root, with env, class and image counts."""
    from rich.console import Console
    from rich.table import Table

    from .data.domainbed import data_root
    from .data.inspect import inspect_root

    try:
        base = data_root(str(root) if root else None)
    except UserError as exc:
        _fail(str(exc))
    reports = inspect_root(base, verify=verify)
    table = Table(title=f"datasets under {base}")
    for col in ("dataset", "status", "envs", "images", "classes", "problems"):
        table.add_column(col, justify="right" if col in ("envs", "images", "problems") else "left")
    for r in reports:
        status = "[green]ok[/]" if r.ok else ("[red]problems[/]" if r.present else "[dim]not found[/]")
        classes = f"{r.n_classes}" + (f" (DomainBed {r.expected_classes})" if r.n_classes != r.expected_classes else "")
        table.add_row(r.name, status, str(len(r.envs)) if r.present else "", str(sum(r.envs.values())) if r.present else "",
                      classes if r.present else "", str(len(r.problems)) if r.problems else "")
    Console().print(table)
    for r in reports:  # whole lines, never wrapped, so names and paths can be copied
        if r.present:
            typer.echo(f"{r.name}: " + " · ".join(f"{env} {n}" for env, n in r.envs.items()))
        for problem in r.problems:
            typer.echo(f"{r.name}: {problem}")


def main() -> None:  # python -m sage_cli
    app(prog_name="sage")


if __name__ == "__main__":
    sys.exit(main())
