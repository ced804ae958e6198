"""The paper's Fig. 3 (the ρ × γ grid of SAGE, and SAGE with each component removed) and App. F (the
target-domain gradient alignment along training), from the runs of ``sage ablate``."""

from __future__ import annotations

from dataclasses import replace

from ..launch.plan import COMPONENTS
from .dg import chosen_accs, dataset_order, records, trial_summary
from .runs import Run
from .tables import Cell, Table


def _is_full_sage(run: Run) -> bool:
    p = run.params
    return (p.get("optimizer.method") == "sage" and p.get("optimizer.polar", "quintic") != "none"
            and p.get("optimizer.scale_by_weight_norm", "True") == "True" and p.get("optimizer.noise", "True") == "True")


def grid_tables(runs: list[Run], selection: str) -> list[Table]:
    """Per dataset with two or more (ρ, γ) settings of full SAGE: target accuracy (mean over test envs, per
    trial seed; mean ± sem over seeds) of each cell, no selection across cells."""
    tables = []
    dg = [r for r in runs if r.kind == "dg"]
    for dataset in dataset_order(r.dataset for r in dg):
        # a random search's draws are no grid: their (ρ, γ) are scattered (the draws table shows them)
        sage = [r for r in dg if r.dataset == dataset and _is_full_sage(r) and r.draw is None]
        sage = [r for r in sage if "optimizer.rho" in r.params and "optimizer.gamma" in r.params]
        cells = {(float(r.params["optimizer.rho"]), float(r.params["optimizer.gamma"])) for r in sage}
        if len(cells) < 2:
            continue
        rhos, gammas = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
        table = Table(f"grid-{selection}-{dataset}", f"{dataset} · SAGE target accuracy over ρ (rows) × γ (columns)",
                      [f"γ={g:g}" for g in gammas], higher_is_better=[True] * len(gammas),
                      notes=["each cell: one (ρ, γ); mean over test envs per trial seed, mean ± sem over seeds"])
        for rho in rhos:
            row = []
            for gamma in gammas:
                name = f"ρ={rho:g} γ={gamma:g}"  # one row of candidates per cell: no selection across cells
                mine = [replace(r, label=name) for r in sage
                        if (float(r.params["optimizer.rho"]), float(r.params["optimizer.gamma"])) == (rho, gamma)]
                row.append(Cell(*trial_summary(chosen_accs(records(mine), selection), dataset, name)))
            table.rows.append((f"ρ={rho:g}", row))
        tables.append(table)
    return tables


def components_tables(runs: list[Run], selection: str) -> list[Table]:
    """Per dataset with the Fig. 3 variants (rows labelled by ``sage ablate --components``)."""
    tables = []
    dg = [r for r in runs if r.kind == "dg"]
    chosen = chosen_accs(records(dg), selection)
    for dataset in dataset_order(r.dataset for r in dg):
        present = [c for c in COMPONENTS if any(r.label == c and r.dataset == dataset for r in dg)]
        if len(present) < 2:
            continue
        table = Table(f"components-{selection}-{dataset}", f"{dataset} · SAGE components (Fig. 3)", ["target acc"],
                      higher_is_better=[True], notes=["mean over test envs per trial seed; mean ± sem over seeds"])
        for c in present:
            table.rows.append((c, [Cell(*trial_summary(chosen, dataset, c))]))
        tables.append(table)
    return tables


def metric_series(runs: list[Run], key: str = "target_alignment",
                  kinds=("dg",)) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """dataset → row label → (step, mean ``key`` over that label's finished runs at that step)."""
    return {d: {lab: [(s, m) for s, m, _sem, _n in pts] for lab, pts in labels.items()}
            for d, labels in spread_series(runs, key, kinds, by_env=False).items()}


def spread_series(runs: list[Run], key: str, kinds=("dg",), by_env: bool = True) -> dict[str, dict[str, list]]:
    """dataset → line → [(step, mean, standard error, n)] of ``key`` over the finished runs (seeds) at each
    checkpoint, unsmoothed; a line per row label, and per held-out env (``label · env t``) where a dataset's
    runs hold out several (``by_env``). ``key`` may name ``{test}`` for the held-out env's index."""
    from .selection import mean_sem

    out: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in runs:
        if r.kind not in kinds or r.status != "FINISHED":
            continue
        envs = {x.test_envs for x in runs if x.dataset == r.dataset and x.kind in kinds}
        line = f"{r.label} · env {','.join(map(str, r.test_envs))}" if by_env and len(envs) > 1 else r.label
        name = key.format(test=r.test_envs[0]) if r.test_envs else key
        for row in r.rows:
            value = row.get(name)
            if isinstance(value, (int, float)) and value == value:  # NaN (a diverged run) is no point
                out.setdefault(r.dataset, {}).setdefault(line, {}).setdefault(row["step"], []).append(value)
    return {d: {line: [(s, *mean_sem(v, scale=1.0)) for s, v in sorted(steps.items())] for line, steps in lines.items()}
            for d, lines in out.items()}
