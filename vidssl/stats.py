"""`vidssl stats`: what a dataset holds, split by split (videos, classes, groups, frames, bad videos)."""

from __future__ import annotations

from .config import StatsConfig
from .data.datasets import detect_kind, load_dataset
from .data.sampling import RandomClip


def dataset_stats(cfg: StatsConfig) -> list[dict]:
    kind = detect_kind(cfg.dataset) if cfg.kind == "auto" else cfg.kind
    subsets = {"ucf101": ["train", "test"], "hmdb51": ["train", "test"], "manifest": ["train", "test"],
               "kinetics": ["train", "val"]}  # fmt: skip
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
