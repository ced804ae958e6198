"""The report's figures (matplotlib, PNG), each with the CSV of what it plots."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from ..plots import png, pyplot
from .ablation import EMA, smooth
from .tables import Table


@dataclass
class Figure:
    key: str  # file stem
    title: str
    png: bytes
    csv: str


def _csv(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def heatmap(table: Table) -> Figure:
    """Fig. 3 (left): the ρ × γ grid, the value written in each cell."""
    import numpy as np

    plt = pyplot()
    values = np.array([[c.mean if c.mean is not None else np.nan for c in cells] for _, cells in table.rows])
    fig, ax = plt.subplots(figsize=(1.3 * len(table.columns) + 2, 1.0 * len(table.rows) + 1.5))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns)
    ax.set_yticks(range(len(table.rows)), [label for label, _ in table.rows])
    for i, (_, cells) in enumerate(table.rows):
        for j, cell in enumerate(cells):
            ax.text(j, i, cell.text(1, sem=False), ha="center", va="center",
                    color="white" if cell.mean is not None and cell.mean < np.nanmean(values) else "black")
    fig.colorbar(image, ax=ax, label="target accuracy (%)")
    ax.set_title(table.title, fontsize=9)
    rows = [[label, col, cell.mean, cell.sem, cell.n] for label, cells in table.rows
            for col, cell in zip(table.columns, cells)]
    return Figure(table.key, table.title, png(fig), _csv(["rho", "gamma", "mean", "sem", "n"], rows))


def bars(table: Table) -> Figure:
    """Fig. 3 (right): one bar per variant, standard-error bars."""
    plt = pyplot()
    labels = [label for label, _ in table.rows]
    means = [cells[0].mean or 0.0 for _, cells in table.rows]
    errors = [cells[0].sem or 0.0 for _, cells in table.rows]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 3.2))
    ax.bar(range(len(labels)), means, yerr=errors, capsize=4, color="#4878a8")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    low = min(m - e for m, e in zip(means, errors)) if means else 0
    ax.set_ylim(max(0.0, low - 5), max(m + e for m, e in zip(means, errors)) + 2 if means else 1)
    ax.set_ylabel("target accuracy (%)")
    ax.set_title(table.title, fontsize=9)
    rows = [[label, cells[0].mean, cells[0].sem, cells[0].n] for label, cells in table.rows]
    return Figure(table.key, table.title, png(fig), _csv(["variant", "mean", "sem", "n"], rows))


def alignment(series: dict[str, dict[str, list[tuple[int, float]]]]) -> Figure | None:
    """App. F: target_alignment against the step, one line per row label, one panel per dataset (the CSV
    holds the raw means; the lines are smoothed)."""
    if not series:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    rows = []
    for ax, (dataset, labels) in zip(axes[0], series.items()):
        for label, points in labels.items():
            steps, values = [p[0] for p in points], [p[1] for p in points]
            ax.plot(steps, smooth(values), label=label)
            rows += [[dataset, label, s, v] for s, v in points]
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel("step")
        ax.axhline(0, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("cos(train gradient, target gradient)")
    fig.suptitle(f"target-domain gradient alignment (App. F); lines: EMA {EMA} of the per-checkpoint means",
                 fontsize=9)
    return Figure("alignment", "Target-domain gradient alignment (App. F)", png(fig),
                  _csv(["dataset", "method", "step", "target_alignment"], rows))


def theorem_terms(series: dict[str, dict[str, dict[str, list[tuple[int, float]]]]]) -> Figure | None:
    """Theorem 1's two traces (``diagnostics.every``) against the step, one panel per term, one line per
    dataset and row label (means over seeds and test envs)."""
    series = {term: s for term, s in series.items() if s}
    if not series:
        return None
    plt = pyplot()
    names = {"diag_curvature_trace": "curvature: tr(H̄)", "diag_alignment_trace": "alignment: tr(H̄⁻¹Σg)"}
    fig, axes = plt.subplots(1, len(series), figsize=(4.6 * len(series), 3.3), squeeze=False)
    rows = []
    for ax, (term, datasets) in zip(axes[0], series.items()):
        for dataset, labels in datasets.items():
            for label, points in labels.items():
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                        label=f"{label}" if len(datasets) == 1 else f"{dataset} · {label}")
                rows += [[term, dataset, label, s, v] for s, v in points]
        ax.set_title(names.get(term, term), fontsize=9)
        ax.set_xlabel("step (MTL: epoch)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("the two terms of Theorem 1 along training (sage diagnose at each diagnostics.every checkpoint)",
                 fontsize=9)
    return Figure("theorem_terms", "Theorem 1's two terms along training", png(fig),
                  _csv(["term", "dataset", "method", "step", "value"], rows))
