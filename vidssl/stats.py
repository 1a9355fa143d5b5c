"""`vidssl stats`: what a dataset holds, split by split (videos, classes, groups, frames, bad videos)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .data.datasets import detect_kind, load_dataset
from .data.sampling import RandomClip


@dataclass
class StatsConfig:
    dataset: str  # dataset folder
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # layout of the dataset
    split: int = 1  # official split (UCF101/HMDB51: 1, 2 or 3)
    cache: str | None = None  # frame cache made by `vidssl preprocess` (else videos are probed)
    clip_length: int = 16  # frames a clip needs; shorter videos are counted as too short


def dataset_stats(cfg: StatsConfig) -> list[dict]:
    kind = detect_kind(cfg.dataset) if cfg.kind == "auto" else cfg.kind
    subsets = {"ucf101": ["train", "test"], "hmdb51": ["train", "test"], "kinetics": ["train", "val"]}
    rows = []
    for subset in subsets.get(kind, ["all"]):
        if kind == "kinetics" and subset == "val":
            import os

            if not os.path.isdir(os.path.join(cfg.dataset, "val")):
                continue
        ds = load_dataset(
            kind,
            cfg.dataset,
            split=cfg.split,
            subset=subset,
            cache=cfg.cache,
            sampler=RandomClip(cfg.clip_length),
            on_short="skip",
        )
        rows.append({"kind": kind, "subset": subset, **ds.summary()})
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in columns]] + [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


STATS_COLUMNS = [
    "subset",
    "videos",
    "classes",
    "groups",
    "videos_per_class_min",
    "videos_per_class_max",
    "frames_min",
    "frames_mean",
    "frames_max",
    "skipped",
]
