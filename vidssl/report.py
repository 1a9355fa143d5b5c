"""Tables for people: aligned text for the terminal, Markdown and a self-contained HTML page.

Every command that prints a table and the demo's report use these, so a number looks the same
wherever it is read.
"""

from __future__ import annotations

import html


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table (floats with one decimal)."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    cols = columns or list(rows[0])
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + [
        "| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows
    ]


def html_table(rows: list[dict], columns: list[str] | None = None) -> str:
    cols = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    cell = lambda v: f"<td>{html.escape(_fmt(v))}</td>"
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}</style>"
)
