"""Table 2's shape: per MTL dataset, each row's metrics (each run's mean over its last ``report_epochs``
epochs, then mean ± standard error over seeds), Δm recomputed from those means against the STL references,
and the paper's + / − marks of each SAGE-X row against X."""

from __future__ import annotations

from ..mtl.benchmarks import BENCHMARKS, delta_m
from .runs import Run
from .selection import mean_sem
from .tables import Cell, Table

# Table 2's columns and the precision it prints them at
COLUMNS = {
    "nyuv2": ["miou", "pixacc", "abs", "rel", "mean", "median", "within_11.25", "within_22.5", "within_30"],
    "cityscapes": ["miou", "pixacc", "abs", "rel"],
    "mtl_digits": ["left_acc", "right_acc", "mean_acc"],
}
DECIMALS = {("nyuv2", "abs"): 4, ("nyuv2", "rel"): 4, ("cityscapes", "abs"): 4}
HEADERS = {"miou": "mIoU", "pixacc": "Pix Acc", "abs": "Abs Err", "rel": "Rel Err", "mean": "Mean",
           "median": "Median", "within_11.25": "11.25°", "within_22.5": "22.5°", "within_30": "30°",
           "delta_m": "Δm%", "left_acc": "left acc", "right_acc": "right acc", "mean_acc": "mean acc"}
LEGEND = ("each run: the mean of its last report_epochs epochs; mean ± standard error over seeds; Δm% from the "
          "means, against the STL references; +/−: SAGE-X better/worse than X, ± equal as shown")


def higher_is_better(dataset: str, metric: str) -> bool:
    bench = BENCHMARKS.get(dataset)
    if metric == "delta_m":
        return False
    if bench is not None and metric in bench.metrics:
        return bench.higher_is_better[bench.metrics.index(metric)]
    return True


def base_of(label: str) -> str | None:
    """The X of a SAGE-X row (SAGE-LS → LS, SAGE-SAMO-LS → SAMO-LS), or None."""
    return label[5:] if label.lower().startswith("sage-") and len(label) > 5 else None


def mtl_tables(runs: list[Run]) -> tuple[list[Table], list[dict]]:
    finished = [r for r in runs if r.kind == "mtl" and r.status == "FINISHED"]
    tables, json_rows = [], []
    datasets = sorted({r.dataset for r in runs if r.kind == "mtl"}, key=lambda d: (d not in COLUMNS, d))
    for dataset in datasets:
        metrics = COLUMNS.get(dataset) or sorted({k for r in finished if r.dataset == dataset for k in r.final})
        bench = BENCHMARKS.get(dataset)
        columns = metrics + (["delta_m"] if bench else [])
        digits = [DECIMALS.get((dataset, m), 2) for m in columns]
        table = Table(f"mtl-{dataset}", f"{dataset} · mean of the last epochs", [HEADERS.get(c, c) for c in columns],
                      higher_is_better=[higher_is_better(dataset, c) for c in columns], decimals=digits,
                      notes=[LEGEND], kind="mtl")
        labels = list(dict.fromkeys(r.label for r in runs if r.kind == "mtl" and r.dataset == dataset))
        rows: dict[str, list[Cell]] = {}
        for label in labels:
            mine = [r for r in finished if (r.dataset, r.label) == (dataset, label)]
            cells = []
            for m in metrics:
                mean, sem, n = mean_sem((r.final[m] for r in mine if m in r.final), scale=1.0)
                cells.append(Cell(mean, sem, n))
            if bench:
                means = [c.mean for c in cells]
                dm = None if None in means else delta_m(means, bench.stl, bench.higher_is_better)
                per_run = [delta_m([r.final[m] for m in metrics], bench.stl, bench.higher_is_better)
                           for r in mine if all(m in r.final for m in metrics)]
                _, sem, n = mean_sem(per_run, scale=1.0)
                cells.append(Cell(dm, sem, n))
            rows[label] = cells
        for label, cells in rows.items():
            base = base_of(label)
            match = next((k for k in rows if base and k.lower() == base.lower()), None)
            if match:
                for j, (mine, theirs) in enumerate(zip(cells, rows[match])):
                    if mine.mean is not None and theirs.mean is not None:
                        a, b = round(mine.mean, digits[j]), round(theirs.mean, digits[j])
                        better = a > b if table.higher_is_better[j] else a < b
                        mine.mark = "±" if a == b else ("+" if better else "-")
            table.rows.append((label, cells))
            for column, cell in zip(columns, cells):
                json_rows.append({"dataset": dataset, "method": label, "metric": column, "mean": cell.mean,
                                  "sem": cell.sem, "n": cell.n, **({"mark": cell.mark} if cell.mark else {})})
        tables.append(table)
    return tables, json_rows
