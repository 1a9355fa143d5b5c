"""`vidssl preprocess`: decode every video of a dataset once into a frame cache (vidssl.data.cache)."""

from __future__ import annotations

import json
import os
import re
import time
from multiprocessing import get_context

from tqdm import tqdm

from .config import PreprocessConfig, check_ranges
from .data.cache import CacheSpec, FrameCache, decode_for_cache, source_stamp
from .data.datasets import video_root
from .data.loading import leave_signals_to_the_main_process
from .data.video import VideoError, list_videos


def _work(job):
    path, rel, cache = job
    try:
        stamp = source_stamp(path)
        frames = decode_for_cache(path, cache.spec)
        return "ok", path, cache.write(rel, stamp, frames)
    except VideoError as e:
        return "bad", path, str(e)


def parse_shard(spec: str | None) -> tuple[int, int]:
    """(index, count) from ``--shard I/N`` (1-based I), else from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if spec is None:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"--shard takes I/N with 1 <= I <= N (e.g. 3/8), not {spec!r}")
    return int(m.group(1)) - 1, int(m.group(2))


def preprocess(cfg: PreprocessConfig) -> dict:
    """Build or complete the cache; returns a summary dict (also written to ``out/report.json``).

    Sharded (``--shard I/N``, or under torchrun), each process caches every N-th video of the
    sorted list, and writes its own ``report-shardIofN.json`` and ``skipped-shardIofN.json``."""
    check_ranges(cfg)
    index, count = parse_shard(cfg.shard)
    spec = CacheSpec(cfg.format, cfg.size, cfg.resample, cfg.quality)
    root = video_root(cfg.dataset, cfg.kind)
    videos = list_videos(root)
    if not videos:
        raise FileNotFoundError(f"{root}: no video files found")
    videos = sorted(videos)[index::count]
    cache = FrameCache.create(cfg.out, spec)
    states = {rel: cache.check(rel, os.path.join(root, rel)) for rel in videos}
    refresh = sum(state in ("stale", "damaged") for state in states.values())
    if refresh:
        tqdm.write(
            f"vidssl: warning: {refresh} cache entries are stale or damaged (a video changed, or a write was cut): "
            "made again"
        )
    todo = [(os.path.join(root, rel), rel, cache) for rel in videos if states[rel] != "fresh"]
    start = time.time()
    written, skipped = 0, {}
    bar = tqdm(
        total=len(videos), initial=len(videos) - len(todo), desc="preprocess", unit="video", disable=not cfg.progress
    )
    workers = cfg.workers or os.cpu_count() or 1
    if workers == 1 or len(todo) <= 1:
        results = map(_work, todo)
        pool = None
    else:
        pool = get_context("fork").Pool(workers, initializer=leave_signals_to_the_main_process)  # else: a hang
        results = pool.imap_unordered(_work, todo, chunksize=1)
    finished = False
    try:
        for status, path, value in results:
            if status == "ok":
                written += 1
            else:
                skipped[os.path.relpath(path, root)] = value
                tqdm.write(f"vidssl: warning: skipping {value}")
            bar.update()
        finished = True
    finally:
        bar.close()
        if pool is not None:  # on Ctrl-C or an error: workers stopped now, not left running
            pool.close() if finished else pool.terminate()
            pool.join()
    sizes = [os.path.getsize(cache.entry(rel)) for rel in videos if cache.has(rel)]
    report = {
        "dataset": os.path.abspath(root),
        "cache": os.path.abspath(cfg.out),
        "spec": {"format": spec.format, "size": spec.size, "resample": spec.resample, "quality": spec.quality},
        "videos": len(videos),
        "written_now": written,
        "already_cached": len(videos) - len(todo),
        "refreshed": refresh,
        "skipped": len(skipped),
        "cached_bytes": sum(sizes),
        "bytes_per_video": sum(sizes) / max(len(sizes), 1),
        "seconds": round(time.time() - start, 2),
    }
    tag = f"-shard{index + 1}of{count}" if count > 1 else ""
    if count > 1:
        report["shard"] = f"{index + 1}/{count}"
    with open(os.path.join(cfg.out, f"skipped{tag}.json"), "w") as f:
        json.dump(skipped, f, indent=1)
    with open(os.path.join(cfg.out, f"report{tag}.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report
