"""``sage report``: runs → every table and figure of the paper's shape → the formats asked for."""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from pathlib import Path

from ..registry import Registry
from . import ablation, comparable, draws, figures, paper
from .dg import dg_tables, known_envs, left_out
from .formats import FORMATS, Report, render, table_csv, to_text
from .mtl import COLUMNS, mtl_tables
from .runs import DIAG_CURVES, Run
from .tables import Cell, Table

# per-selection tables beyond Table 1's: (DG runs, selection) -> [Table]; their figure, if any: Table -> Figure
TABLES = Registry("report table", {"grid": ablation.grid_tables, "components": ablation.components_tables,
                                   "draws": draws.draw_tables})
FIGURES = {"grid": figures.heatmap, "components": figures.bars}


def unstarted_jobs(runs: list[Run], sweeps: list[str]) -> list[dict]:
    """Jobs of the sweeps (where their folder is on this machine) that have no run in the store yet."""
    import json

    from ..launch.state import SweepState

    have = {r.recipe_hash for r in runs}
    out = []
    for sweep in sweeps:
        try:
            state = SweepState.load(sweep)
        except Exception:  # the sweep folder is elsewhere (another machine, another SAGE_SWEEPS)
            continue
        for job in state.jobs.values():
            if job.hash in have:
                continue
            try:
                recipe = json.loads(Path(job.recipe_path).read_text())
                dataset = recipe["dataset"]["name"]
            except (OSError, ValueError, KeyError):
                continue
            out.append({"run_id": None, "status": "NOT_STARTED", "dataset": dataset, "method": job.label,
                        "recipe_hash": job.hash, "sweep": state.id})
    return out


def not_finished(runs: list[Run], dataset: str, sweeps: list[str], unstarted=()) -> tuple[str, list[dict]]:
    """One line counting the jobs of ``dataset`` that are not FINISHED (failed, running, not started, …), and
    their JSON records."""
    mine = [r for r in runs if r.dataset == dataset]
    waiting = [j for j in unstarted if j["dataset"] == dataset]
    left = [r for r in mine if r.status != "FINISHED"]
    if not left and not waiting:
        return "", []
    words = {"FAILED": "failed", "RUNNING": "running", "KILLED": "killed", "SCHEDULED": "queued"}
    counts = Counter(words.get(r.status, r.status.lower()) for r in left)
    if waiting:
        counts["not started"] = len(waiting)
    what = ", ".join(f"{n} {s}" for s, n in counts.most_common())
    see = f" — see `sage status {sweeps[0]}`" if len(sweeps) == 1 else ""
    records = [{"run_id": r.run_id, "status": r.status, "dataset": r.dataset, "method": r.label,
                "test_envs": list(r.test_envs), "trial_seed": r.trial_seed, "sweep": r.sweep} for r in left]
    total = len(mine) + len(waiting)
    return f"{dataset}: {len(left) + len(waiting)} of {total} jobs not finished: {what}{see}", records + waiting


def loo_gaps(runs: list[Run]) -> list[str]:
    """Which pair runs leave-one-domain-out selection lacks, per dataset and row."""
    lines = []
    for dataset in sorted({r.dataset for r in runs if r.kind == "dg"}):
        n = len(known_envs(dataset)) or 1 + max(e for r in runs for e in r.test_envs)
        for label in dict.fromkeys(r.label for r in runs if r.dataset == dataset and r.kind == "dg"):
            have = {r.test_envs for r in runs if (r.dataset, r.label, r.status) == (dataset, label, "FINISHED")}
            missing = [p for p in combinations(range(n), 2) if p not in have]
            if missing:
                shown = " ".join("{%d,%d}" % p for p in missing[:6]) + (" …" if len(missing) > 6 else "")
                lines.append(f"{dataset} {label}: LOO needs runs holding out each pair of envs; {len(missing)} of "
                             f"{n * (n - 1) // 2} pairs have no finished run ({shown}); plan them with "
                             f"`--test-envs pairs`")
    return lines


def _paper_dg(table: Table, datasets: list[str]) -> None:
    labels = [label for label, _ in table.rows]
    complete = set(datasets) == set(paper.TABLE1_DATASETS)
    for label in labels:
        values = [paper.table1_value(label, d) for d in datasets]
        if any(v is not None for v in values):
            avg = paper.table1_value(label, "avg") if complete else None
            table.paper.append((label, [Cell(v, None, 1) for v in values] + [Cell(avg, None, 1)]))
            table.notes.append(f"paper's {label}: {paper.table1_protocol(label)}")


def _paper_mtl(table: Table, dataset: str) -> None:
    metrics = COLUMNS.get(dataset, []) + ["delta_m"]
    for label, _ in table.rows:
        values = [paper.table2_value(label, dataset, m) for m in metrics]
        if any(v is not None for v in values):
            table.paper.append((label, [Cell(v, None, 1) for v in values]))


def build(runs: list[Run], selections: list[str], with_paper: bool = False, sweeps: list[str] | None = None,
          source: str = "", with_figures: bool = True) -> Report:
    """Every table; the figures too unless ``with_figures`` is False (text, Markdown, CSV, JSON show none)."""
    sweeps = sweeps or sorted({r.sweep for r in runs if r.sweep})
    report = Report(f"sage report · {source}" if source else "sage report")
    runs, split_notes = comparable.split(runs)  # runs trained or evaluated otherwise: tables of their own
    report.notes += split_notes + comparable.label_clashes(runs)
    data: dict = {"dg": [], "mtl": [], "not_finished": [], "source": source,
                  "selections": selections, "runs": len(runs)}
    unstarted = unstarted_jobs(runs, sweeps)
    for dataset in dict.fromkeys([*(r.dataset for r in runs), *(j["dataset"] for j in unstarted)]):
        line, records = not_finished(runs, dataset, sweeps, unstarted)
        if line:
            report.notes.append(line)
            data["not_finished"] += records
    dg = [r for r in runs if r.kind == "dg"]
    skipped = left_out(dg)
    if skipped:
        report.notes.append(skipped)
    for selection in selections if dg else []:
        tables, rows = dg_tables(dg, selection)
        data["dg"] += rows
        if with_paper:
            summary = tables[-1]
            _paper_dg(summary, summary.columns[:-1])
        if not any(any(c.mean is not None for _, cells in t.rows for c in cells) for t in tables):
            for t in tables:
                t.notes.append("no finished run gives a value under this selection"
                               + (": see the LOO note below" if selection == "loo" else ""))
        report.tables += tables
        for name in TABLES.names():
            for table in TABLES.get(name)(dg, selection):
                report.tables.append(table)
                if with_figures and name in FIGURES:
                    report.figures.append(FIGURES[name](table))
    if "loo" in selections:
        report.notes += loo_gaps(dg)
    if any(r.draw is not None for r in dg):
        data["search"] = draws.summaries(dg)
    mtl = [r for r in runs if r.kind == "mtl"]
    if mtl:
        tables, rows = mtl_tables(mtl)
        data["mtl"] = rows
        if with_paper:
            for table in tables:
                _paper_mtl(table, table.key.split("-", 1)[1])
        report.tables += tables
    if with_figures:
        held_out = ablation.spread_series([r for r in dg if len(r.test_envs) == 1], "env{test}_in_acc")
        summaries = [t for t in report.tables if t.key.startswith("dg-") and t.key.endswith("-summary")]
        for made in (figures.alignment(ablation.spread_series(dg, "target_alignment")),
                     figures.accuracy_curves(held_out), *(figures.table1_bars(t) for t in summaries)):
            if made is not None:
                report.figures.append(made)
    terms = figures.theorem_terms({key: ablation.metric_series(runs, key, kinds=("dg", "mtl"))
                                   for key in DIAG_CURVES}) if with_figures else None
    if terms is not None:
        report.figures.append(terms)
    if with_paper:
        findings = paper.flagged()
        report.notes += [f"paper check: {f.line()}" for f in findings]
        data["paper"] = {"table1": paper.table("table1"), "table2": paper.table("table2")}
        data["paper_check"] = [{"table": f.table, "method": f.method, "what": f.what, "stated": f.stated,
                                "recomputed": f.recomputed, "slack": f.slack, "note": f.note} for f in findings]
    for table in report.tables:  # every number says how many seeds it averages
        if table.n_note():
            table.notes.insert(0, table.n_note())
    if not report.tables:
        report.notes.append("nothing to report: no DG or MTL run in the selection")
    data["tables"] = [t.as_dict() for t in report.tables]  # every table (grid, components too), every n
    report.data = data
    return report


def write(report: Report, out: Path, with_paper: bool = False) -> list[Path]:
    """Every format and figure into ``out`` (created); the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    names = {"md": "report.md", "latex": "report.tex", "json": "report.json", "html": "report.html",
             "csv": "report.csv"}
    for fmt in FORMATS:
        if fmt == "text":
            from rich.console import Console

            path = out / "report.txt"
            with path.open("w") as f:
                to_text(report, Console(file=f, width=160, color_system=None), with_paper)
        else:
            path = out / names[fmt]
            path.write_text(render(report, fmt, with_paper))
        written.append(path)
    (out / "tables").mkdir(exist_ok=True)
    for table in report.tables:
        path = out / "tables" / f"{table.key}.csv"
        path.write_text(table_csv(table, with_paper))
        written.append(path)
    (out / "figures").mkdir(exist_ok=True)
    for figure in report.figures:
        for suffix, content in (("png", figure.png), ("csv", figure.csv)):
            path = out / "figures" / f"{figure.key}.{suffix}"
            path.write_bytes(content) if suffix == "png" else path.write_text(content)
            written.append(path)
    return written
