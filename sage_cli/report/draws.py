"""A random search's outcome (``sage sweep`` with ``search:``): per dataset, which draw model selection chose in
each (row, test env, trial seed) cell, with its values, and how many draws never finished or were pruned."""

from __future__ import annotations

from .dg import candidate_runs, chosen_accs, dataset_order, drawn, records, settings_text
from .runs import Run
from .selection import SELECTIONS
from .tables import Cell, Table


def _searched(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.kind == "dg" and r.draw is not None]


def draw_tables(runs: list[Run], selection: str) -> list[Table]:
    searched = _searched(runs)
    if not searched:
        return []
    chosen = chosen_accs(records(searched), selection)
    candidates = candidate_runs(searched)
    tables = []
    for dataset in dataset_order(r.dataset for r in searched):
        table = Table(f"draws-{selection}-{dataset}", f"{dataset} · random search: the chosen draw · model "
                      f"selection: {SELECTIONS[selection]}", ["validation", "test"], higher_is_better=[True, True],
                      notes=[search_note([r for r in searched if r.dataset == dataset])])
        for (trial, d, label, env), v in sorted(chosen.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][0])):
            if d != dataset:
                continue
            pick = drawn(candidates[(d, label, trial, v["hparams_seed"])])
            values = settings_text(pick["values"])
            name = f"{label} · env {env} · trial {trial} → draw {pick['draw']}"
            table.rows.append((f"{name} ({values})" if values else name,
                               [Cell(100 * v["val_acc"]), Cell(100 * v["test_acc"])]))
        tables.append(table)
    return tables


def summary(runs: list[Run]) -> dict:
    """A search's counts over ``runs``: draws per cell, runs, runs never finished, pruned runs, steps saved."""
    cells = {(r.label, r.test_envs, r.trial_seed) for r in runs}
    pruned = [r for r in runs if r.pruned_at is not None]
    return {"draws_per_cell": max((len({r.draw for r in runs if (r.label, r.test_envs, r.trial_seed) == c})
                                   for c in cells), default=0),
            "runs": len(runs), "never_finished": sum(1 for r in runs if r.status != "FINISHED"), "pruned": len(pruned),
            "steps_saved": sum(r.steps_saved for r in pruned)}


def summaries(runs: list[Run]) -> list[dict]:
    """``summary`` per dataset of the searched DG runs (the JSON report's ``search``)."""
    searched = _searched(runs)
    return [{"dataset": d, **summary([r for r in searched if r.dataset == d])}
            for d in dataset_order(r.dataset for r in searched)]


def search_note(runs: list[Run]) -> str:
    """One line: draws per cell, how many never finished, how many were pruned and the steps that saved."""
    s = summary(runs)
    return (f"{s['draws_per_cell']} draw(s) per cell (draw 0: the recipe's values); {s['never_finished']} of "
            f"{s['runs']} runs never finished; {s['pruned']} pruned"
            + (f", saving {s['steps_saved']} steps" if s["pruned"] else ""))
