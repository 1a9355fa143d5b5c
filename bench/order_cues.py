"""What a class-blind statistic tells of clip order: is there an order cue that needs no action?

For every video, tuples of N clips (the clip-order task's sampling) are ordered by one number per
clip that knows nothing of the action: its motion energy (mean absolute frame difference), and,
for reference, its mean brightness. The table gives how often that ordering is exactly right
(chance 1/N!) and the ratio to chance. A statistic far above chance is a shortcut: clip order
can be solved by it without learning the actions, and its features then need not transfer.

    python bench/order_cues.py --dataset runs/demo/synth --cache runs/demo/cache
    python bench/order_cues.py --dataset ../shared/data/weizmann --size 64x80 --clip-length 8 --interval 4
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.data.datasets import load_dataset  # noqa: E402
from vidssl.data.sampling import ClipTuple, sample_seed  # noqa: E402
from vidssl.report import format_table  # noqa: E402


def order_accuracy(values: np.ndarray) -> tuple[float, float]:
    """``values`` (tuples, N), one statistic per clip in true time order: the share of tuples whose
    ascending order is the time order, and of those whose descending order is."""
    n = values.shape[1]
    up = (np.argsort(values, 1, kind="stable") == np.arange(n)).all(1).mean()
    down = (np.argsort(-values, 1, kind="stable") == np.arange(n)).all(1).mean()
    return float(up), float(down)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--cache", default=None)
    p.add_argument("--size", default="48x48", help="HxW frames (without a cache)")
    p.add_argument("--num-clips", type=int, default=3)
    p.add_argument("--clip-length", type=int, default=16)
    p.add_argument("--interval", type=int, default=8)
    p.add_argument("--draws", type=int, default=4, help="tuples per video")
    p.add_argument("--split", type=int, default=1)
    a = p.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    sampler = ClipTuple(a.num_clips, a.clip_length + 1, a.interval)  # +1: a difference needs two frames
    ds = load_dataset("auto", a.dataset, split=a.split, subset="train", cache=a.cache,
                      size=None if a.cache else size, sampler=sampler)  # fmt: skip
    energy, bright, labels = [], [], []
    for i in range(len(ds)):
        for d in range(a.draws):
            idx = ds.frame_indices(i, torch.Generator().manual_seed(sample_seed(0, d, i)))
            frames = ds.read(i, idx.reshape(-1))
            clips = frames.reshape(*idx.shape, *frames.shape[1:]).astype(np.float32)
            energy.append(np.abs(np.diff(clips, axis=1)).mean(axis=(1, 2, 3, 4)))
            bright.append(clips.mean(axis=(1, 2, 3, 4)))
            labels.append(ds.records[i].label)
    energy, bright, labels = np.stack(energy), np.stack(bright), np.array(labels)
    chance = 1 / math.factorial(a.num_clips)

    def row(name: str, values: np.ndarray) -> dict:
        up, down = order_accuracy(values)
        return {"statistic": name, "ascending": f"{100 * up:.1f}", "descending": f"{100 * down:.1f}",
                "chance": f"{100 * chance:.1f}", "x chance": f"{max(up, down) / chance:.2f}"}  # fmt: skip

    rows = [row("motion energy", energy), row("mean brightness", bright)]
    rows += [row(f"motion energy, {ds.classes[c]}", energy[labels == c]) for c in sorted(set(labels.tolist()))]
    print(
        f"{ds.name}: {len(ds)} videos x {a.draws} tuples of {a.num_clips} x {a.clip_length} frames, {a.interval} apart"
    )
    print(format_table(rows, ["statistic", "ascending", "descending", "chance", "x chance"]))


if __name__ == "__main__":
    main()
