"""``sage run``: a validated recipe → data → training → one MLflow run, with a progress bar and a summary.

Order matters for users: everything that can be wrong with their input (recipe, data) is checked before
the MLflow run exists, so bad input leaves nothing behind.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..errors import TrainingDiverged
from ..recipe import Recipe
from ..track.mlflow_run import MlflowRun, resolve_tracking_uri


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    status: str
    target_acc: float | None = None
    selected_target_acc: float | None = None


def run_tags(recipe: Recipe) -> dict[str, str]:
    return {
        "sage.recipe_hash": recipe.hash(),
        "sage.dataset": recipe.dataset.name,
        "sage.method": recipe.optimizer.method,
        "sage.objective": recipe.objective.name,
        "sage.test_envs": ",".join(map(str, recipe.dataset.test_envs)),
        "sage.seed": str(recipe.training.seed),
        "sage.host": platform.node(),
    }


def summary_table(result, recipe: Recipe) -> Table:
    last = result.history[-1].metrics
    table = Table(title=f"{recipe.name or 'run'} · {recipe.dataset.name} · {recipe.optimizer.method} "
                        f"· step {result.history[-1].step}")
    for col in ("env", "role", "in acc", "out acc"):
        table.add_column(col, justify="right" if "acc" in col else "left")
    for i, name in enumerate(result.data.env_names):
        role = "[bold magenta]test[/]" if i in result.data.test_envs else "train"
        table.add_row(f"{i} ({name})", role, f"{last[f'env{i}_in_acc']:.4f}", f"{last[f'env{i}_out_acc']:.4f}")
    return table


def run_recipe(recipe: Recipe, console: Console | None = None) -> RunOutcome:
    from .dg import load_dg_data, results_jsonl, select_training_domain, train_dg

    console = console or Console()
    data = load_dg_data(recipe)  # data errors surface before any MLflow run exists
    uri = resolve_tracking_uri(recipe.tracking.uri)
    run = MlflowRun(uri, recipe.tracking.experiment, recipe.name, run_tags(recipe))
    history = []

    def on_checkpoint(ckpt):
        history.append(ckpt)
        run.log_metrics(ckpt.metrics, step=ckpt.step)

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=False)
    try:
        run.log_params(recipe.flat())
        run.log_text(recipe.to_yaml(), "recipe.yaml")
        with progress:
            task = progress.add_task("training", total=recipe.training.steps, status="")

            def on_step(step):
                progress.update(task, completed=step + 1)

            def on_ckpt(ckpt):
                on_checkpoint(ckpt)
                accs = " ".join(f"{ckpt.metrics[f'env{i}_out_acc']:.3f}" for i in data.test_envs)
                progress.update(task, status=f"loss {ckpt.metrics['loss']:.3f} · test out {accs}")

            result = train_dg(recipe, data=data, on_checkpoint=on_ckpt, progress=on_step)
    except TrainingDiverged as exc:
        run.set_tags({"sage.failed_step": exc.step, "sage.failure": str(exc)})
        if history:
            run.log_text(results_jsonl(history), "results.jsonl")
        run.finish("FAILED")
        raise
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise

    test = data.test_envs[0]
    target = result.history[-1].metrics[f"env{test}_in_acc"]
    selected = select_training_domain(result.history, data.train_envs, test).metrics[f"env{test}_in_acc"]
    run.log_metrics({"target_acc": target, "target_acc_selected": selected}, step=result.history[-1].step)
    run.log_text(results_jsonl(result.history), "results.jsonl")

    def write_checkpoint(path):
        import torch

        torch.save({"model": result.model.state_dict(), "optimizer": result.optimizer.state_dict(),
                    "step": result.history[-1].step, "recipe": recipe.model_dump(mode="json")}, path)

    run.log_bytes(write_checkpoint, "checkpoint.pt")
    run.finish("FINISHED")
    console.print(summary_table(result, recipe))
    return RunOutcome(run.run_id, uri, "FINISHED", target, selected)
