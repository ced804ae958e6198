"""Tables as data: cells with a mean, a standard error and a count; every format renders the same objects."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    mean: float | None  # percent for accuracies; None: DomainBed's "X"
    sem: float | None = None
    n: int = 0
    mark: str = ""  # Table 2's signs: "+" SAGE-X improves on X, "-" it hurts, "±" equal at the shown precision

    def text(self, decimals: int = 1, sem: bool = True, usual_n: int | None = None) -> str:
        """The value (± its standard error over seeds); with ``usual_n``, a cell averaging another number of
        seeds says so ("(n=1)"), so that no cell passes for what the table's note says the others are."""
        if self.mean is None:
            return "X"
        value = f"{self.mean:.{decimals}f}"
        if sem and self.sem is not None and self.n > 1:
            value += f" ± {self.sem:.{decimals}f}"
        if usual_n is not None and self.n and self.n != usual_n:
            value += f" (n={self.n})"
        return value + (f" {self.mark}" if self.mark else "")


@dataclass
class Table:
    key: str  # a file name: letters, digits, '-', '_'
    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    higher_is_better: list[bool] | None = None  # per column, for the bold/underline of LaTeX (None: no ranking)
    decimals: list[int] | None = None
    paper: list[tuple[str, list[Cell]]] = field(default_factory=list)  # the paper's rows (--with-paper)
    kind: str = "dg"

    def __post_init__(self):
        # a file name (tables/<key>.csv): a split dataset's "pacs [training.steps=40]" becomes pacs-training-steps-40
        self.key = "-".join("".join(c if c.isalnum() or c in "-_" else " " for c in self.key).split())

    def digits(self, j: int) -> int:
        return self.decimals[j] if self.decimals else 1

    @property
    def usual_n(self) -> int | None:
        """The number of seeds most of the table's cells average (ties: the larger); None without counts."""
        counts = [c.n for _, cells in self.rows for c in cells if c.mean is not None and c.n]
        return max(set(counts), key=lambda n: (counts.count(n), n)) if counts else None

    def cell_text(self, cell: Cell, j: int, paper: bool = False) -> str:
        """A cell as every format prints it; the paper's own rows carry no seed count."""
        return cell.text(self.digits(j), usual_n=None if paper else self.usual_n)

    def n_note(self) -> str:
        """What every cell averages, for the table's notes ('' where cells carry no count)."""
        n = self.usual_n
        return f"n = {n} trial seed{'s' if n != 1 else ''} per cell unless marked (n=…)" if n else ""

    def ranks(self, j: int) -> dict[int, int]:
        """Row index → 1 (best) or 2 (second best) in column ``j``, at the displayed precision, among the cells
        that average the usual number of seeds (a one-seed cell is not the best of three-seed ones)."""
        if not self.higher_is_better:
            return {}
        sign, usual = (1 if self.higher_is_better[j] else -1), self.usual_n

        def ranked(c: Cell) -> bool:
            return c.mean is not None and (usual is None or not c.n or c.n == usual)

        values = sorted({round(c.mean, self.digits(j)) for _, cells in self.rows for c in [cells[j]] if ranked(c)},
                        key=lambda v: -sign * v)
        out = {}
        for i, (_, cells) in enumerate(self.rows):
            if ranked(cells[j]):
                place = values.index(round(cells[j].mean, self.digits(j))) + 1
                if place <= 2:
                    out[i] = place
        return out

    def as_dict(self) -> dict:
        """The table as plain data (the JSON format's ``tables``): every cell with its n."""
        def cell(c: Cell) -> dict:
            return {"mean": c.mean, "sem": c.sem, "n": c.n, **({"mark": c.mark} if c.mark else {})}

        return {"key": self.key, "title": self.title, "columns": self.columns, "notes": self.notes,
                "rows": [{"label": label, "cells": [cell(c) for c in cells]} for label, cells in self.rows]}
