"""The report's figures (matplotlib, PNG), each with the CSV of what it plots."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from ..plots import png, pyplot
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
    ax.set_xticks(range(len(table.columns)), [_compact(c) for c in table.columns])
    ax.set_yticks(range(len(table.rows)), [_compact(label) for label, _ in table.rows])
    ax.set_xlabel("γ (descent noise)")
    ax.set_ylabel("ρ (spectral ascent radius)")
    for i, (_, cells) in enumerate(table.rows):
        for j, cell in enumerate(cells):
            ax.text(j, i, cell.text(1, sem=False), ha="center", va="center",
                    color="white" if cell.mean is not None and cell.mean < np.nanmean(values) else "black")
    fig.colorbar(image, ax=ax, label="target accuracy (%)")
    ax.set_title(table.title, fontsize=9)
    rows = [[label, col, cell.mean, cell.sem, cell.n] for label, cells in table.rows
            for col, cell in zip(table.columns, cells)]
    return Figure(table.key, table.title, png(fig), _csv(["rho", "gamma", "mean", "sem", "n"], rows))


def _compact(label: str) -> str:
    """'ρ=0.0001' → '1e-4': the value alone (the axis names it), in the short form a paper's tick would use."""
    value = label.split("=", 1)[-1]
    try:
        number = float(value)
    except ValueError:
        return label
    mantissa, exponent = f"{number:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if number and not 0.01 <= abs(number) < 1000 else f"{number:g}"


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


def _band_panels(series: dict[str, dict[str, list]], ylabel: str, scale: float = 1.0):
    """One panel per dataset, one line per row (and held-out env): the per-checkpoint mean over seeds, a band of
    ± its standard error where there are two seeds or more. (fig, CSV rows)"""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(4.4 * len(series), 3.3), squeeze=False)
    rows = []
    for ax, (dataset, lines) in zip(axes[0], series.items()):
        for line, points in lines.items():
            steps = [p[0] for p in points]
            means = [scale * p[1] for p in points]
            sems = [scale * (p[2] or 0.0) for p in points]
            drawn = ax.plot(steps, means, marker="o", ms=2.5, lw=1.2, label=line)[0]
            if any(p[3] > 1 for p in points):
                ax.fill_between(steps, [m - e for m, e in zip(means, sems)], [m + e for m, e in zip(means, sems)],
                                color=drawn.get_color(), alpha=0.2, lw=0)
            rows += [[dataset, line, p[0], p[1], p[2], p[3]] for p in points]
        ax.set_title(dataset, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    return fig, axes, rows


def alignment(series: dict[str, dict[str, list]]) -> Figure | None:
    """App. F: target_alignment against the step, per-checkpoint means over seeds with a ± s.e. band, one line
    per row (and per held-out env where there are several), one panel per dataset; no smoothing."""
    if not series:
        return None
    fig, axes, rows = _band_panels(series, "cos(train gradient, target gradient)")
    for ax in axes[0]:
        ax.axhline(0, color="grey", lw=0.5)
    fig.suptitle("target-domain gradient alignment (App. F): mean over the row's finished runs at each checkpoint, "
                 "band ± s.e.; unsmoothed", fontsize=8)
    return Figure("alignment", "Target-domain gradient alignment (App. F)", png(fig),
                  _csv(["dataset", "line", "step", "mean", "sem", "n"], rows))


def accuracy_curves(series: dict[str, dict[str, list]]) -> Figure | None:
    """The held-out env's accuracy against the step, per row: how training went, not only where it ended."""
    if not series:
        return None
    fig, _axes, rows = _band_panels(series, "held-out accuracy (%)", scale=100.0)
    fig.suptitle("held-out env accuracy (in split) along training: mean over the row's finished runs (its seeds, "
                 "and its candidates where it has several), band ± s.e.", fontsize=8)
    return Figure("accuracy_curves", "Held-out accuracy along training", png(fig),
                  _csv(["dataset", "line", "step", "mean", "sem", "n"], rows))


def table1_bars(table: Table) -> Figure | None:
    """Table 1 as bars: per dataset (and Avg) one bar per row, ± the standard error over trial seeds."""
    import numpy as np

    if not table.rows or all(c.mean is None for _, cells in table.rows for c in cells):
        return None
    plt = pyplot()
    labels, columns = [label for label, _ in table.rows], table.columns
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) * max(1, len(labels) / 3) + 2, 3.4))
    rows = []
    for i, (label, cells) in enumerate(table.rows):
        x = np.arange(len(columns)) + (i - (len(labels) - 1) / 2) * width
        means = [c.mean if c.mean is not None else np.nan for c in cells]
        errors = [c.sem or 0.0 for c in cells]
        ax.bar(x, means, width, yerr=errors, capsize=3, label=label)
        rows += [[label, col, c.mean, c.sem, c.n] for col, c in zip(columns, cells)]
    ax.set_xticks(range(len(columns)), columns, rotation=15, ha="right")
    finite = [c.mean for _, cells in table.rows for c in cells if c.mean is not None]
    ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5))
    ax.set_ylabel("held-out accuracy (%)")
    ax.legend(fontsize=7, ncol=min(4, len(labels)))
    ax.set_title(table.title, fontsize=9)
    return Figure(f"bars-{table.key}", f"{table.title} (bars)", png(fig),
                  _csv(["method", "dataset", "mean", "sem", "n"], rows))


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
