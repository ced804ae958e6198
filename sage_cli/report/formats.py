"""One report, every format: text (rich), Markdown, LaTeX (booktabs; best bold, second underlined, as the
paper), CSV (one file per table), JSON (the contract scripts read), and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field

from .figures import Figure
from .tables import Table

FORMATS = ("text", "md", "latex", "csv", "json", "html")


@dataclass
class Report:
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the JSON contract
    notes: list[str] = field(default_factory=list)  # what is not finished, what the paper check found, …


def _rows(table: Table, with_paper: bool):
    yield from ((label, cells, False) for label, cells in table.rows)
    if with_paper:
        yield from ((f"paper: {label}", cells, True) for label, cells in table.paper)


# ------------------------------------------------------------------------------------------------ text
def to_text(report: Report, console, with_paper: bool = False) -> None:
    from rich.table import Table as RichTable

    for table in report.tables:
        rich = RichTable(title=table.title, title_justify="left", caption="\n".join(table.notes),
                         caption_justify="left")
        rich.add_column("method")
        for col in table.columns:
            rich.add_column(col, justify="right")
        for label, cells, paper in _rows(table, with_paper):
            style = "dim italic" if paper else None
            rich.add_row(label, *[table.cell_text(c, j, paper) for j, c in enumerate(cells)], style=style)
        console.print(rich)
    for note in report.notes:
        console.print(note)


# ------------------------------------------------------------------------------------------- markdown
def _md(text: str) -> str:
    """A table cell: a ``|`` would end the cell, a newline the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report, with_paper: bool = False) -> str:
    out = [f"# {report.title}", ""]
    for table in report.tables:
        out += [f"## {table.title}", "", "| method | " + " | ".join(_md(c) for c in table.columns) + " |",
                "|---|" + "---:|" * len(table.columns)]
        for label, cells, paper in _rows(table, with_paper):
            name = f"*{_md(label)}*" if paper else _md(label)
            out.append(f"| {name} | " + " | ".join(table.cell_text(c, j, paper) for j, c in enumerate(cells)) + " |")
        out += [""] + [f"*{n}*" for n in table.notes] + [""]
    out += [f"- {n}" for n in report.notes]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- LaTeX
TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$", "{": r"\{",
       "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}", ">": r"\textgreater{}",
       "|": r"\textbar{}", "±": r"$\pm$", "Δ": r"$\Delta$", "ρ": r"$\rho$", "γ": r"$\gamma$", "σ": r"$\sigma$",
       "°": r"$^\circ$", "−": "-", "–": "--", "—": "---", "·": r"$\cdot$", "√": r"$\surd$", "×": r"$\times$",
       "…": r"\ldots{}", "≤": r"$\leq$", "≥": r"$\geq$", "→": r"$\rightarrow$", "’": "'", "“": "``", "”": "''"}


def _tex(text: str) -> str:
    """Text for pdflatex with its default fonts: every special character escaped in one pass (so no escape is
    escaped again), the symbols sage prints in math mode, any other non-ASCII character spelt in ASCII where
    it has a plain form (é → e) and '?' where it has none, so the file always compiles."""
    import unicodedata

    out = []
    for ch in text:
        if ch in TEX:
            out.append(TEX[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(_tex(plain) if plain else "?")
    return "".join(out)


def to_latex(report: Report, with_paper: bool = False) -> str:
    """One tabular per table (booktabs); per column the best value bold and the second underlined."""
    out = [f"% {report.title} — sage report; needs \\usepackage{{booktabs}}"]
    empty = [t for t in report.tables if not any(c.mean is not None for _, cells in t.rows for c in cells)]
    for table in report.tables:
        if table in empty:  # a table of X only says nothing in a paper: one note below names it instead
            continue
        ranks = [table.ranks(j) for j in range(len(table.columns))]
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(table.title)}}}",
                f"\\label{{tab:{_label(table.key)}}}",
                "\\begin{tabular}{l" + "c" * len(table.columns) + "}", "\\toprule",
                "Method & " + " & ".join(_tex(c) for c in table.columns) + " \\\\", "\\midrule"]
        for i, (label, cells) in enumerate(table.rows):
            texts = []
            for j, cell in enumerate(cells):
                text = _tex(table.cell_text(cell, j))
                place = ranks[j].get(i)
                texts.append(f"\\textbf{{{text}}}" if place == 1 else f"\\underline{{{text}}}" if place == 2 else text)
            out.append(f"{_tex(label)} & " + " & ".join(texts) + " \\\\")
        if with_paper and table.paper:
            out.append("\\midrule")
            for label, cells in table.paper:
                out.append(f"\\textit{{paper: {_tex(label)}}} & "
                           + " & ".join(_tex(table.cell_text(c, j, True)) for j, c in enumerate(cells)) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
        if table.notes:
            out.append("\\\\[2pt]{\\footnotesize " + _tex("; ".join(table.notes)) + "}")
        out += ["\\end{table}", ""]
    notes = [*report.notes, *(f"left out: {t.title} (no run gives it a value)" for t in empty)]
    if notes:  # printed, not % comments: a table's footnote may point to them
        out += ["\\paragraph{Notes.}", "\\begin{itemize}", *(f"\\item{{}} {_tex(n)}" for n in notes), "\\end{itemize}"]
    return "\n".join(out) + "\n"


def _label(key: str) -> str:
    """A \\label name: letters, digits, '-' and ':' only (a key may hold a dataset's '_' or a '.')."""
    return "".join(c if c.isalnum() or c in "-:" else "-" for c in key)


# ------------------------------------------------------------------------------------------------ CSV
def table_csv(table: Table, with_paper: bool = False) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", *[_csv_text(x) for c in table.columns for x in (c, f"{c} sem", f"{c} n")],
                     *(["marks"] if table.kind == "mtl" else [])])
    for label, cells, _ in _rows(table, with_paper):
        values = [x for c in cells for x in (_num(c.mean), _num(c.sem), c.n)]
        writer.writerow([_csv_text(label), *values,
                         *(["".join(c.mark or "." for c in cells)] if table.kind == "mtl" else [])])
    return buf.getvalue()


def _csv_text(text: str) -> str:
    """A text cell a spreadsheet will not run: one starting as a formula (= + - @, tab, CR) gets a leading '
    (OWASP's advice on CSV injection); numbers are written by ``_num`` and never pass here."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _num(value):
    return "" if value is None else f"{value:.6g}"


def to_csv(report: Report, with_paper: bool = False) -> str:
    return "\n".join(f"# {t.title}\n{table_csv(t, with_paper)}" for t in report.tables)


# ----------------------------------------------------------------------------------------------- JSON
def _finite(value):
    """JSON has no NaN or infinity (RFC 8259): such a value is written as null, as a missing one is."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(report: Report) -> str:
    return json.dumps(_finite(report.data), indent=1, sort_keys=True, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------------------- HTML
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}h2{font-size:1.05em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}tr.paper td{color:#777;font-style:italic}td.best{font-weight:bold}
td.second{text-decoration:underline}p.note{color:#666;font-size:.85em}img{max-width:100%;border:1px solid #eee}"""


def to_html(report: Report, with_paper: bool = False) -> str:
    """One file: every table, every figure embedded as a data URI, no external asset."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    for table in report.tables:
        ranks = [table.ranks(j) for j in range(len(table.columns))]
        parts.append(f"<h2>{html.escape(table.title)}</h2><table><tr><th>method</th>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
        for i, (label, cells, paper) in enumerate(_rows(table, with_paper)):
            tds = []
            for j, cell in enumerate(cells):
                place = None if paper else ranks[j].get(i)
                cls = {1: " class='best'", 2: " class='second'"}.get(place, "")
                tds.append(f"<td{cls}>{html.escape(table.cell_text(cell, j, paper))}</td>")
            parts.append(f"<tr{' class=paper' if paper else ''}><td>{html.escape(label)}</td>{''.join(tds)}</tr>")
        parts.append("</table>" + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in table.notes))
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode()
        parts.append(f"<h2>{html.escape(figure.title)}</h2><img alt='{html.escape(figure.title)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in report.notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def render(report: Report, fmt: str, with_paper: bool = False) -> str:
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html}[fmt](report, with_paper) \
        if fmt != "json" else to_json(report)
