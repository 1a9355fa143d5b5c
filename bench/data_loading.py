"""Data-loading benchmark: clips/s for 16x112x112 training clips, by how frames are read.

Rows, each on the synthetic set and on the real UCF101/HMDB51 sample clips (../shared/data):
  full-decode  decode the whole video per sample, then cut the clip (the VCOP reference code's way)
  seek-decode  vidssl on the fly: seek to the keyframe before the clip, decode only the clip
  cache-jpeg   vidssl frame cache, JPEG frames (the default format)
  cache-raw    vidssl frame cache, raw uint8, memory-mapped
each in one process (torch and the loader on one core: the per-core figure) and with DataLoader
workers; "x full" is the single-process speed-up over full-decode measured in the same run; kB/video
and kB/frame are what each needs on disk. Frames are stored at 128x171 (VCOP).

    python bench/data_loading.py [--seconds 4] [--workers 2] [--json bench/results/data_loading.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.data.datasets import video_folder  # noqa: E402
from vidssl.data.sampling import RandomClip  # noqa: E402
from vidssl.data.synth import SynthConfig, generate  # noqa: E402
from vidssl.data.transforms import train_transform  # noqa: E402
from vidssl.data.video import read_frames  # noqa: E402
from vidssl.preprocess import PreprocessConfig, preprocess  # noqa: E402
from vidssl.report import format_table  # noqa: E402

SIZE = (128, 171)
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


class FullDecode(torch.utils.data.Dataset):
    """The reference approach: decode the whole video for every sample, keep 16 frames."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        frames = read_frames(self.ds._path(self.ds.records[i]), size=SIZE)
        idx = self.ds.sampler(len(frames), g)[0]
        clip = torch.from_numpy(frames[idx]).permute(3, 0, 1, 2)
        return self.ds.transform(clip, g).contiguous(), 0


def rate(dataset, seconds: float, workers: int) -> float:
    """Clips per second drawn through a DataLoader (batch 8) for about ``seconds``."""
    loader = DataLoader(
        dataset,
        batch_size=8,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    n, start, warm = 0, None, 0
    while True:
        for clips, _ in loader:
            if start is None:  # the first batch pays for worker start-up: not counted
                warm += 1
                if warm == 2:
                    start = time.perf_counter()
                continue
            n += clips.shape[0]
            if time.perf_counter() - start > seconds:
                return n / (time.perf_counter() - start)


def disk_bytes(paths) -> float:
    sizes = [os.path.getsize(p) for p in paths]
    return sum(sizes) / len(sizes)


def mean_frames(ds) -> float:
    return sum(ds.num_frames) / len(ds.num_frames)


def bench_set(name: str, root: str, work: str, seconds: float, workers: int) -> list[dict]:
    kw = dict(sampler=RandomClip(16), transform=train_transform(112))
    live = video_folder(root, size=SIZE, **kw)
    video_bytes = disk_bytes([live._path(r) for r in live.records])
    caches = {}
    for fmt in ("jpeg", "raw"):
        cache = os.path.join(work, f"{name}-{fmt}")
        preprocess(PreprocessConfig(root, cache, format=fmt, size=SIZE, progress=False))
        caches[fmt] = (
            video_folder(root, cache=cache, **kw),
            disk_bytes([os.path.join(cache, r.rel + (".jpgs" if fmt == "jpeg" else ".npy")) for r in live.records]),
        )
    sets = {
        "full-decode": (FullDecode(live), video_bytes),
        "seek-decode": (live, video_bytes),
        "cache-jpeg": caches["jpeg"],
        "cache-raw": caches["raw"],
    }
    rows = []
    for method, (ds, nbytes) in sets.items():
        one = rate(ds, seconds, 0)
        many = rate(ds, seconds, workers)
        rows.append(
            {
                "data": name,
                "method": method,
                "videos": len(live),
                "clips/s 1 proc": one,
                f"clips/s {workers} workers": many,
                "kB/video": nbytes / 1e3,
                "kB/frame": nbytes / 1e3 / mean_frames(live),
            }
        )
    ref = rows[0]["clips/s 1 proc"]
    for r in rows:
        r["x full"] = r["clips/s 1 proc"] / ref
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the parallel column")
    p.add_argument("--json", default="bench/results/data_loading.json", help="where to write the results")
    args = p.parse_args()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="vidssl-bench-")
    try:
        synth = os.path.join(work, "synth")
        generate(synth, SynthConfig(groups=4, clips=2), progress=False)  # 80 videos of 80 frames
        rows = bench_set("synthetic", os.path.join(synth, "UCF-101"), work, args.seconds, args.workers)
        if os.path.isdir(SHARED):
            rows += bench_set("real UCF101+HMDB51", SHARED, work, args.seconds, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cols = [
        "data",
        "method",
        "videos",
        "clips/s 1 proc",
        f"clips/s {args.workers} workers",
        "x full",
        "kB/video",
        "kB/frame",
    ]
    print(
        f"16x112x112 clips (random crop + flip) from frames at {SIZE[0]}x{SIZE[1]}; "
        f"{os.cpu_count()} cores; torch {torch.__version__}"
    )
    print(format_table(rows, cols))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
