"""Clip sampling policies: which frame indices a sample reads. Shared by every dataset.

A policy maps (number of frames in the video, a torch.Generator) to an int64 index array of shape
``(K, T)``: K clips of T frames. ``min_frames`` is the shortest video it can serve without looping;
shorter videos are skipped or looped by the dataset, as its caller chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _randint(high: int, g: torch.Generator) -> int:
    """Uniform integer in [0, high] drawn from ``g``."""
    return int(torch.randint(high + 1, (1,), generator=g))


@dataclass(frozen=True)
class RandomClip:
    """One clip of ``length`` consecutive frames (every ``stride``-th) at a random start."""

    length: int = 16
    stride: int = 1
    stacked = False  # a sample is one clip (C, T, H, W), not a stack (K, C, T, H, W)

    @property
    def min_frames(self) -> int:
        return (self.length - 1) * self.stride + 1

    def __call__(self, num_frames: int, g: torch.Generator) -> np.ndarray:
        start = _randint(max(num_frames - self.min_frames, 0), g)
        return (start + np.arange(self.length) * self.stride)[None]


@dataclass(frozen=True)
class UniformClips:
    """``num_clips`` clips spaced evenly from the first to the last frame (deterministic; testing)."""

    num_clips: int = 10
    length: int = 16
    stride: int = 1
    stacked = True  # (K, C, T, H, W) even for K = 1, so consumers need no special case

    @property
    def min_frames(self) -> int:
        return (self.length - 1) * self.stride + 1

    def __call__(self, num_frames: int, g: torch.Generator | None = None) -> np.ndarray:
        last_start = max(num_frames - self.min_frames, 0)
        starts = np.linspace(0, last_start, self.num_clips).round().astype(np.int64)
        return starts[:, None] + np.arange(self.length) * self.stride


@dataclass(frozen=True)
class ClipTuple:
    """``num_clips`` non-overlapping clips of ``length`` frames, ``interval`` frames apart, in time order.

    The clip-order task (VCOP, section 3.1) shuffles them; here they stay ordered. The tuple spans
    ``num_clips * length + (num_clips - 1) * interval`` frames (64 for the paper's 3 x 16 with 8).
    """

    num_clips: int = 3
    length: int = 16
    interval: int = 8
    stacked = True
    # Looping a short video would make the clips share frames: the trivial solution VCOP 3.1 warns of.
    loopable = False

    @property
    def min_frames(self) -> int:
        return self.num_clips * self.length + (self.num_clips - 1) * self.interval

    def __call__(self, num_frames: int, g: torch.Generator) -> np.ndarray:
        start = _randint(max(num_frames - self.min_frames, 0), g)
        starts = start + np.arange(self.num_clips) * (self.length + self.interval)
        return starts[:, None] + np.arange(self.length)


def resample_indices(num_frames: int, target: int) -> np.ndarray:
    """Indices that resample a video evenly to ``target`` frames (3DRotNet: 160 for Kinetics, 90 for MiT)."""
    return np.linspace(0, num_frames - 1, target).round().astype(np.int64)


def sample_seed(seed: int, epoch: int, index: int, *more: int) -> int:
    """A well-mixed 63-bit seed per (run seed, epoch, sample[, more keys]): the same clips whatever
    the worker count."""
    return int(np.random.SeedSequence([seed, epoch, index, *more]).generate_state(1, dtype=np.uint64)[0] >> 1)


def balanced_draw(index, k: int, seed: int) -> torch.Tensor:
    """One of ``k`` classes for each item of ``index``: a fixed function of (seed, item) that uses
    every class equally often. Items ``i`` of block ``i // k`` take a seeded permutation of the k
    classes, so any k consecutive items hold each class once (validation targets: the same every
    epoch, balanced, whatever the batching or the number of processes)."""
    out = []
    for i in torch.as_tensor(index).tolist():
        g = torch.Generator().manual_seed(sample_seed(seed, i // k, k))
        out.append(int(torch.randperm(k, generator=g)[i % k]))
    return torch.tensor(out, dtype=torch.long)


def uniform_draw(index, seed: int) -> torch.Tensor:
    """A fixed uniform number in [0, 1) for each item of ``index``, a function of (seed, item)."""
    draw = lambda i: float(torch.rand((), generator=torch.Generator().manual_seed(sample_seed(seed, i, 1))))
    return torch.tensor([draw(i) for i in torch.as_tensor(index).tolist()], dtype=torch.float32)


def split_videos(n: int, val: int, fraction: float, seed: int, limit: int | None = None) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) video indices: ``val`` held out (at most 10% of ``n``), then a
    ``fraction`` of the rest kept, at most ``limit`` videos (pretraining on less data, 3DRotNet Table 4)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val = min(val, n // 10)
    held, rest = sorted(order[:val]), order[val:]
    keep = max(1, round(len(rest) * fraction))
    keep = min(keep, limit) if limit else keep
    return sorted(rest[:keep]), held
