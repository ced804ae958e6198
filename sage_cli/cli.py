"""The ``sage`` command line. Commands parse, call and print; heavy imports (torch, mlflow) happen inside
the commands so that ``sage --help`` stays instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from .analysis_cli import register as register_analysis
from .bench_cli import register as register_bench
from .cards import names as dataset_names
from .errors import Stopped, UserError
from .errors import exit_with as _fail

app = typer.Typer(
    name="sage",
    help="Run, schedule and report SAGE (Spectral-Aware Gradient-Aligned Exploration) experiments.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"sage {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print sage's version and exit.")):
    """Run, schedule and report SAGE (Spectral-Aware Gradient-Aligned Exploration) experiments."""


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
    wait: bool = typer.Option(False, "--wait", help="If this recipe is running already, wait for it to end."),
    force: bool = typer.Option(False, "--force", help="Train again a recipe whose identity has a FINISHED run."),
):
    """Train one recipe and record it as one MLflow run (an interrupted run resumes where it stopped)."""
    try:
        resolved = _load(recipe, set_, seed, test_env)
        from .openmp import quiet_idle_threads

        quiet_idle_threads(resolved.dataset)  # before torch loads
        from .errors import TrainingDiverged
        from .train.runner import run_recipe

        outcome = run_recipe(resolved, restart=restart, wait=wait, force=force)
    except UserError as exc:
        _fail(str(exc))
    except TrainingDiverged as exc:
        _fail(str(exc), code=1)
    except Stopped as exc:
        _fail(f"interrupted; MLflow run {exc.run_id} is marked KILLED and its checkpoint kept for the next run",
              code=130)
    except KeyboardInterrupt:
        _fail("interrupted while starting, before any MLflow run existed: nothing was recorded", code=130)
    typer.echo(outcome.summary)
    kept = " (kept in the run folder until `sage sync`: the server was unreachable)" if outcome.spooled else ""
    typer.echo(f"mlflow run {outcome.run_id} FINISHED in {outcome.tracking_uri}{kept}")


@app.command()
def sync(
    folders: Optional[List[Path]] = typer.Argument(None, help="Run folders, or folders of them (default: ./runs)."),
):
    """Send to MLflow what runs kept while their server was unreachable (oldest first, nothing twice)."""
    from .track.spool import sync as replay

    results = replay(folders or [Path("runs")])
    if not results:
        typer.echo("nothing kept: every run's records are in MLflow")
        return
    for path, sent, left in results:
        typer.echo(f"{path}: {sent} sent" + (f", {left} still kept (the server is unreachable)" if left else ""))
    if any(left for _, _, left in results):
        raise typer.Exit(1)


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
    flat, idle = resolved.flat(), sorted(resolved.idle())
    if idle:  # apart: they are neither logged with the run nor part of its identity
        typer.echo("# idle here (not read by this run): " + ", ".join(f"{k}={flat[k]}" for k in idle))
    if resolved.kind == "dg":
        from .protocols import describe

        typer.echo("\n".join(f"# {line}" for line in describe(resolved)))
    typer.echo(f"# ok: {recipe} · hash {resolved.hash()}")


datasets_app = typer.Typer(help="Which datasets are under the data root; `sage datasets download` fetches them.",
                            no_args_is_help=False, rich_markup_mode=None)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback(invoke_without_command=True)
def datasets(
    ctx: typer.Context,
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default: $SAGE_DATA)."),
    verify: bool = typer.Option(False, "--verify", help="Open every image to find unreadable ones (slow)."),
):
    """Which datasets (DomainBed's five, NYU-v2, Cityscapes) are under the data root, with env, class and
    image counts, and the command that fetches each missing one."""
    if ctx.invoked_subcommand:
        return
    from rich.console import Console
    from rich.table import Table

    from .data.domainbed import data_root
    from .data.download import fetch_command
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
    for r in reports:  # whole lines, never wrapped, so names, paths and commands can be copied
        if r.present:
            typer.echo(f"{r.name}: " + " · ".join(f"{env} {n}" for env, n in r.envs.items()))
        else:
            typer.echo(f"{r.name}: not found; fetch it with: {fetch_command(r.name, base)}")
        for problem in r.problems:
            typer.echo(f"{r.name}: {problem}")


@datasets_app.command("prepare")
def datasets_prepare(
    name: str = typer.Argument(..., help=f"A DomainBed image folder: {dataset_names('domainbed')}."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root (default: $SAGE_DATA)."),
    image_size: int = typer.Option(224, "--image-size", min=1, help="The recipes' dataset.image_size."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where (default: $SAGE_CACHE, else <root>/.sage-cache)."),
    workers: str = typer.Option("auto", "--workers", help="Decoding processes (auto: the CPUs here minus one)."),
):
    """Build a dataset's evaluation cache (every image resized to --image-size, uint8) once, ahead of the runs
    that would otherwise build it at their first evaluation."""
    from .catalog import DATASETS, card, folder_cards
    from .data.eval_cache import EvalCache
    from .data.pipeline import resolve_workers

    try:
        folders = [c.name for c in folder_cards()]
        if name not in folders:
            raise UserError(f"'{name}' has no evaluation cache: image folders are {', '.join(folders)}")
        if workers != "auto" and not workers.isdigit():
            raise UserError(f"--workers '{workers}': auto or a count >= 0")
        dataset = DATASETS.get(name)(root=str(root) if root else None, image_size=image_size, card=card(name))
        cache = EvalCache(name, dataset, str(cache_dir) if cache_dir else None).plan()
        n = sum(len(env) for env in dataset.datasets)
        folder = cache.ensure(resolve_workers(workers if workers == "auto" else int(workers)), say=typer.echo)
    except UserError as exc:
        _fail(str(exc))
    typer.echo(f"evaluation cache of {name} at {image_size}²: {n:,} images in {folder}")


@datasets_app.command("download")
def datasets_download(
    names: List[str] = typer.Argument(..., help=f"Datasets: {dataset_names()}."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data root, created if missing (default: $SAGE_DATA)."),
    force: bool = typer.Option(False, "--force", help="Replace a dataset folder that is there but incomplete."),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="Keep the archives after extracting them."),
):
    """Fetch datasets from the sources DomainBed's and MTAN's scripts use, into the layout `sage datasets`
    checks: resumable, checked, and moved into place only when complete (run it again to resume)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from .data import download as dl
    from .data.domainbed import data_root

    console = Console()
    try:
        base = data_root(str(root) if root else None, must_exist=False)
        todo = []
        for p in dl.plan(names):
            state = dl.status_of(base, p.name) if base.is_dir() else "absent"
            if state == "complete":
                typer.echo(f"{p.name}: complete at {base / p.source.directory}; skipped")
            elif state == "absent" or force:
                todo.append(p)
            else:
                raise UserError(f"{p.name}: {base / p.source.directory} is there but incomplete ({state}); pass "
                                "--force to replace it")
        if not todo:
            return
        dl.writable_root(base)
        dl.check_space(base, todo)
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        for p in todo:
            with Progress(*columns, console=console) as progress:
                final = dl.install(base, p, progress, notice=console.print, keep_archives=keep_archives)
            typer.echo(f"{p.name}: installed at {final}")
    except UserError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume the download", code=130)


def _split(values: str | None, cast=float, name: str = "") -> list | None:
    if values is None:
        return None
    try:
        found = [cast(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--{name} '{values}': expected a comma-separated list of numbers") from None
    if not found:
        raise UserError(f"--{name} '{values}': no value given; e.g. --{name} 1e-6,1e-5")
    return found


def _test_envs(value: str | None):
    if value is None:
        return None
    return value.strip() if value.strip() in ("all", "pairs") else _split(value, int, "test-envs")


LAUNCH_OPTIONS = dict(
    seeds=typer.Option(None, "--seeds", help="Trial seeds, e.g. 0,1,2 (default: the recipe's sweep.seeds)."),
    test_envs=typer.Option(None, "--test-envs", help="'all', 'pairs' (all, plus every pair: LOO selection) or e.g. 0,2 (default: sweep.test_envs)."),
    launcher=typer.Option("local", "--launcher", help="local | slurm (launch/launchers.py)"),
    max_parallel=typer.Option(1, "--max-parallel", min=1, help="Local launcher: jobs at once."),
    dry_run=typer.Option(False, "--dry-run", help="Print the job table; run nothing."),
    force=typer.Option(False, "--force", help="Rerun jobs that already have a FINISHED run."),
    tracking_uri=typer.Option(None, "--tracking-uri", help="MLflow store for the whole sweep."),
)


def _print_notes(notes: list[str]) -> None:
    for note in dict.fromkeys(notes):  # once each, in order
        typer.echo(f"note: {note}", err=True)


def _launch(sweep_id, name, jobs, tracking_uri, experiment, slurm, launcher, max_parallel, dry_run, force):
    from rich.console import Console

    from .launch.launchers import LAUNCHERS
    from .launch.sweep import job_table, launch, make_plan, summary_line, unfinished_line

    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher '{launcher}': choose {' or '.join(LAUNCHERS.names())}")
    if not dry_run:
        LAUNCHERS.get(launcher)().check()  # no scheduler here: one line before anything is planned or printed
    plan = make_plan(sweep_id, name, jobs, tracking_uri, experiment, slurm, force)
    console = Console()
    if dry_run:
        console.print(job_table(plan))
        typer.echo(summary_line(plan))
        return
    typer.echo(summary_line(plan))
    try:
        state = launch(plan, launcher, max_parallel, console)
    except KeyboardInterrupt:
        _fail("interrupted: running jobs were stopped and marked KILLED", code=130)
    left = unfinished_line(state, plan) if LAUNCHERS.get(launcher).blocking else ""
    if left:  # cancelled or failed jobs: a script that waits on the sweep must see it
        _fail(f"sweep {plan.id}: {left}; `sage status {plan.id}` for each, `sage logs JOB` for why", code=1)
    typer.echo(f"sweep {plan.id}: `sage status {plan.id}` to follow it")


@app.command()
def ablate(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    rho: Optional[str] = typer.Option(None, "--rho", help="ρ values, e.g. 1e-6,1e-5"),
    gamma: Optional[str] = typer.Option(None, "--gamma", help="γ values, e.g. 1e-6,1e-5"),
    components: bool = typer.Option(False, "--components", help="Add Fig. 3's variants at the recipe's ρ, γ."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    seeds: Optional[str] = LAUNCH_OPTIONS["seeds"],
    test_envs: Optional[str] = LAUNCH_OPTIONS["test_envs"],
    launcher: str = LAUNCH_OPTIONS["launcher"],
    max_parallel: int = LAUNCH_OPTIONS["max_parallel"],
    dry_run: bool = LAUNCH_OPTIONS["dry_run"],
    force: bool = LAUNCH_OPTIONS["force"],
    tracking_uri: Optional[str] = LAUNCH_OPTIONS["tracking_uri"],
):
    """The ρ × γ grid (× seeds × test envs) of a recipe, with --components the Fig. 3 ablation."""
    try:
        from .launch.plan import COMPONENTS, expand, sweep_id

        base = _load(recipe, set_)
        axes = {}
        if rho:
            axes["optimizer.rho"] = _split(rho, float, "rho")
        if gamma:
            axes["optimizer.gamma"] = _split(gamma, float, "gamma")
        if not axes and not components:
            raise UserError("give --rho and/or --gamma values, or --components")
        run_seeds, run_envs = _split(seeds, int, "seeds"), _test_envs(test_envs)
        notes: list[str] = []
        # the grid runs the recipe's own method (after --set): a ρ or γ it does not read is a note, not jobs
        jobs = expand(base, axes, None, run_seeds, run_envs, str(recipe), notes=notes) if axes else []
        if components:  # Fig. 3's variants run at the recipe's own ρ and γ, not over the grid
            jobs += expand(base, {}, COMPONENTS, run_seeds, run_envs, str(recipe), notes=notes)
        _print_notes(notes)
        name = f"ablate-{base.name or recipe.stem}"
        _launch(sweep_id(name, jobs), name, jobs, tracking_uri, base.tracking.experiment, None, launcher,
                max_parallel, dry_run, force)
    except UserError as exc:
        _fail(str(exc))


@app.command()
def sweep(
    experiment: Path = typer.Argument(..., help="Experiment YAML file (recipes × methods × grid)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP + " On every job, as the file's "
                                             "overrides: (before its methods and grid); part of each identity."),
    n_hparams: Optional[int] = typer.Option(None, "--n-hparams", min=1, help="Random search: draws per (method, "
                                            "dataset), draw 0 = the recipe's values (the file's search: sets the rest)."),
    seeds: Optional[str] = LAUNCH_OPTIONS["seeds"],
    test_envs: Optional[str] = LAUNCH_OPTIONS["test_envs"],
    launcher: str = LAUNCH_OPTIONS["launcher"],
    max_parallel: int = LAUNCH_OPTIONS["max_parallel"],
    dry_run: bool = LAUNCH_OPTIONS["dry_run"],
    force: bool = LAUNCH_OPTIONS["force"],
    tracking_uri: Optional[str] = LAUNCH_OPTIONS["tracking_uri"],
):
    """Run an experiment file: its recipes × method overrides × grid [× random-search draws] × seeds × test envs."""
    try:
        from .launch.plan import load_experiment, sweep_id

        notes: list[str] = []
        from .recipe import parse_overrides

        exp = load_experiment(experiment, _split(seeds, int, "seeds"), _test_envs(test_envs), notes,
                              parse_overrides(set_), n_hparams)
        _print_notes(notes)
        _launch(sweep_id(exp.name, exp.jobs), exp.name, exp.jobs, tracking_uri, exp.tracking_experiment, exp.slurm,
                launcher, max_parallel, dry_run, force)
    except UserError as exc:
        _fail(str(exc))


def _writable(folder: Path | None, option: str) -> None:
    """An output folder is written into for real before any work (permission bits say nothing to root, and a
    read-only mount only answers a write)."""
    from .filesystem import write_problem

    problem = write_problem(folder) if folder is not None else None
    if problem:
        raise UserError(f"{option} {folder}: cannot write there ({problem}); nothing was written")


@app.command(short_help="The paper's tables and figures from your runs (DomainBed's model selection).")
def report(
    sweeps: Optional[List[str]] = typer.Argument(None, help="Sweep ids (or prefixes); none: every sweep."),
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", help="MLflow experiment names instead."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Default: as for sage run."),
    selection: str = typer.Option("training", "--selection", help="training | oracle | loo (DomainBed's) | merged (DISAM's) | all."),
    fmt: str = typer.Option("text", "--format", help="text | md | latex | csv | json | html."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write every format, table CSV and figure here."),
    with_paper: bool = typer.Option(False, "--with-paper", help="The paper's rows beside ours, and its check."),
    from_domainbed: Optional[Path] = typer.Option(None, "--from-domainbed", help="A DomainBed sweep output folder."),
):
    """The paper's Table 1 and Table 2 (and Fig. 3, App. F) from your runs, with DomainBed's model selection."""
    try:
        from .report.formats import FORMATS
        from .report.selection import SELECTIONS

        if selection not in (*SELECTIONS, "all"):
            raise UserError(f"--selection '{selection}': choose training, oracle, loo, merged or all")
        if fmt not in FORMATS:
            raise UserError(f"--format '{fmt}': choose {', '.join(FORMATS)}")
        if out is not None and out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder")
        if from_domainbed is not None and (experiment or tracking_uri):
            given = "--experiment" if experiment else "--tracking-uri"
            raise UserError(f"--from-domainbed reads a DomainBed folder, not an MLflow store: {given} does not "
                            "apply to it; give one or the other")
        _writable(out, "--out")
        from rich.console import Console

        from .report.build import build, write
        from .report.formats import render, to_text
        from .report.runs import from_domainbed as read_domainbed
        from .report.runs import from_store
        from .track.mlflow_run import absolute_uri, resolve_tracking_uri

        if from_domainbed is not None:
            runs, source = read_domainbed(from_domainbed), f"DomainBed {from_domainbed}"
        else:
            uri = absolute_uri(resolve_tracking_uri(tracking_uri))
            runs, source = from_store(uri, sweeps, experiment), uri
        # all: DomainBed's three, and DISAM's merged source validation where some run logged what it reads
        merged = any("merged_out_acc" in row for r in runs for row in r.rows)
        chosen = [s for s in SELECTIONS if s != "merged" or merged] if selection == "all" else [selection]
        result = build(runs, chosen, with_paper, sweeps, source, with_figures=out is not None or fmt == "html")
        if out is not None:
            written = write(result, out, with_paper)
            typer.echo(f"wrote {len(written)} files to {out}")
        elif fmt == "text":
            to_text(result, Console(), with_paper)
        else:
            sys.stdout.write(render(result, fmt, with_paper))
    except UserError as exc:
        _fail(str(exc))


@app.command()
def export(
    sweeps: Optional[List[str]] = typer.Argument(None, help="Sweep ids (or prefixes); none: every sweep."),
    domainbed: Path = typer.Option(..., "--domainbed", help="Output folder, in DomainBed's sweep layout."),
    experiment: Optional[List[str]] = typer.Option(None, "--experiment", help="MLflow experiment names instead."),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help="Default: as for sage run."),
):
    """Finished DG runs as a DomainBed sweep folder (results.jsonl + done per run), for its collect_results."""
    try:
        from .report.domainbed import export as export_runs
        from .report.runs import from_store
        from .track.mlflow_run import absolute_uri, resolve_tracking_uri

        _writable(domainbed, "--domainbed")
        uri = absolute_uri(resolve_tracking_uri(tracking_uri))
        n = export_runs(uri, from_store(uri, sweeps, experiment), domainbed)
        typer.echo(f"wrote {n} runs to {domainbed} (python -m domainbed.scripts.collect_results --input_dir {domainbed})")
    except UserError as exc:
        _fail(str(exc))


@app.command()
def status(sweep: Optional[str] = typer.Argument(None, help="Sweep id (or a unique prefix); none: list sweeps.")):
    """Every job of a sweep: queued, running, finished, failed, cancelled or requeued."""
    from rich.console import Console
    from rich.table import Table

    from .launch.state import SweepState, all_sweeps
    from .launch.status import job_statuses

    console = Console()
    try:
        if sweep is None:
            table = Table(title="sweeps")
            for col in ("sweep", "launcher", "jobs", "tracking"):
                table.add_column(col)
            skipped: list[str] = []
            for st in all_sweeps(skipped):
                table.add_row(st.id, st.launcher, str(len(st.jobs)), st.tracking_uri)
            console.print(table)
            for line in skipped:
                typer.echo(f"skipped: {line}", err=True)
            return
        state = SweepState.load(sweep)
        rows = job_statuses(state)
    except UserError as exc:
        _fail(str(exc))
    table = Table(title=f"sweep {state.id} ({state.launcher})", title_justify="left")
    for col in ("job", "hash", "status", "scheduler id", "attempt", "resumed from"):
        table.add_column(col)
    for r in rows:
        word = f"{r['status']} (pruned at step {r['pruned_at']})" if r["pruned_at"] else r["status"]
        table.add_row(r["label"], r["hash"], word, r["scheduler_id"], str(r["attempt"]), r["resumed_from"])
    console.print(table)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo(" · ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@app.command()
def cancel(sweep: str = typer.Argument(..., help="Sweep id (or a unique prefix).")):
    """Cancel every unfinished job of a sweep (scancel, or stop the local processes)."""
    from .launch.state import SweepState
    from .launch.status import cancel_sweep

    try:
        state = SweepState.load(sweep)
        typer.echo(f"cancelled {cancel_sweep(state)} job(s) of {state.id}")
    except UserError as exc:
        _fail(str(exc))


@app.command()
def logs(job: str = typer.Argument(..., help="Job hash (or prefix) or scheduler id."),
         lines: int = typer.Option(50, "--lines", "-n", help="Last N lines of each log.")):
    """Print the end of a sweep job's logs."""
    from .launch.state import all_sweeps

    found = [(s, j) for s in all_sweeps() for j in s.jobs.values()
             if j.hash.startswith(job) or j.scheduler_id == job]
    if not found:
        _fail(f"no job '{job}' in any sweep under $SAGE_SWEEPS (or ./sweeps)")
    if len({j.hash for _, j in found}) > 1:
        _fail(f"'{job}' matches {len(found)} jobs; give more of the hash")
    state, record = found[0]
    paths = [Path(record.log_path)] if record.log_path else []
    if paths and paths[0].suffix == ".out":
        paths.append(paths[0].with_suffix(".err"))
    shown = False
    for path in paths:
        if path.is_file():
            shown = True
            typer.echo(f"==> {path} <==")
            typer.echo("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    if not shown:
        _fail(f"job {record.hash} ({record.label}) has no log yet")


register_analysis(app)
register_bench(app)


def main() -> None:
    """The ``sage`` command (and ``python -m sage_cli``). An error of the MLflow store that no command foresaw
    (a server answering errors mid-command, a store refusing a write) is one line, not a traceback."""
    try:
        app(prog_name="sage")
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        text = str(exc).strip().splitlines()
        typer.echo(f"error: the MLflow store failed: {(text[0] if text else type(exc).__name__)[:300]}", err=True)
        sys.exit(2)
    finally:
        from .shutdown import leave_quickly

        leave_quickly()  # the process's own entry point: nothing runs after this


if __name__ == "__main__":
    sys.exit(main())
