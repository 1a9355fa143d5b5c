"""Tables for people: aligned text for the terminal, Markdown and a self-contained HTML page.

Every command that prints a table and the demo's report use these, so a number looks the same
wherever it is read.
"""

from __future__ import annotations

import html
import json


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
    "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}"
    ".cap{color:#444;font-size:90%;max-width:900px}</style>"
)


def machine() -> str:
    """The device a report's numbers come from, named as a reader can compare it: the GPU, or the
    CPU model and its thread count (figures differ between CPUs: see the README)."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {name}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


def git_commit() -> str | None:
    """The commit of the vidssl source this runs from (``+dirty`` with local changes), if it is a git checkout."""
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", here], capture_output=True,
                               text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def provenance(seeds) -> dict[str, str]:
    """What a report states about where its numbers come from."""
    import time

    import torch

    from . import __version__

    return {
        "vidssl": __version__,
        "torch": torch.__version__,
        "commit": git_commit() or "not a git checkout",
        "device": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "seeds": ", ".join(map(str, seeds)),
    }


def image_data(path: str) -> str:
    """A PNG as a data: URI, so the page needs no other file."""
    import base64

    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def html_page(title: str, intro: str, facts: dict, settings: dict, tables: list, pictures: list) -> str:
    """A self-contained HTML report: ``tables`` as (title, rows, caption), ``pictures`` as (title,
    PNG path, caption: what to look for), embedded; ``facts`` (provenance) and ``settings`` as tables."""
    esc = html.escape
    kv = lambda d: html_table([{"": k, "value": v if isinstance(v, str) else json.dumps(v)} for k, v in d.items()])
    page = [f"<!doctype html><meta charset=utf-8><title>{esc(title)}</title>", STYLE, f"<h1>{esc(title)}</h1>"]
    page += [f"<p>{esc(intro)}</p>", "<h2>Where these numbers come from</h2>", kv(facts)]
    for name, rows, caption in tables:
        page.append(f"<h2>{esc(name)}</h2>{html_table(rows)}<p class=cap>{esc(caption)}</p>")
    for name, path, caption in pictures:
        page.append(
            f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='{image_data(path)}'><p class=cap>{esc(caption)}</p>"
        )
    page += ["<h2>Settings</h2>", kv(settings)]
    return "\n".join(page)
