"""Tables as data: cells with a mean, a standard error and a count; every format renders the same objects."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Cell:
    mean: float | None  # percent for accuracies; None: DomainBed's "X"
    sem: float | None = None
    n: int = 0
    mark: str = ""  # Table 2's signs: "+" SAGE-X improves on X, "-" it hurts, "±" equal at the shown precision

    def text(self, decimals: int = 1, sem: bool = True) -> str:
        if self.mean is None:
            return "X"
        value = f"{self.mean:.{decimals}f}"
        if sem and self.sem is not None and self.n > 1:
            value += f" ± {self.sem:.{decimals}f}"
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

    def digits(self, j: int) -> int:
        return self.decimals[j] if self.decimals else 1

    def ranks(self, j: int) -> dict[int, int]:
        """Row index → 1 (best) or 2 (second best) in column ``j``, at the displayed precision."""
        if not self.higher_is_better:
            return {}
        sign = 1 if self.higher_is_better[j] else -1
        values = sorted({round(c.mean, self.digits(j)) for _, cells in self.rows
                         for c in [cells[j]] if c.mean is not None}, key=lambda v: -sign * v)
        out = {}
        for i, (_, cells) in enumerate(self.rows):
            if cells[j].mean is not None:
                place = values.index(round(cells[j].mean, self.digits(j))) + 1
                if place <= 2:
                    out[i] = place
        return out
