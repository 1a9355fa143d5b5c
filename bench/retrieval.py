"""Retrieval benchmark at UCF101 size: vidssl's chunked top-k vs the reference full distance matrix.

UCF101 split 1: 3,783 test videos query 9,537 training videos with 9216-d features (VCOP's conv5
feature at 16x112x112). Video level: one feature per video. Clip level: 10 clips per video, every
query clip against every gallery clip (37,830 x 95,370).

Rows:
  reference  sklearn's cosine_distances on the full matrix, then argsort per row (the clip-order
             paper's retrieval code does this)
  vidssl     vidssl.retrieval.nearest: normalise, then query chunks of 1,024 x the gallery, top-k
Each row runs in a fresh process (features are made there from a fixed seed), so "peak MB" is that
process's peak RSS above its RSS once the features exist: the memory the search itself needs.
Both rows must find the same top-50 (checked: the overlap of their lists on the video level).

At clip level the reference's distance matrix (14.4 GB) and its argsort (28.9 GB) do not fit this
machine; both rows are then run on the first --clip-queries query clips and their time scaled
linearly to all 37,830 (the work is linear in the queries: marked "scaled"); the reference's memory
is given as what its full matrix needs.

    python bench/retrieval.py [--clip-queries 3783] [--json bench/results/retrieval.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.report import format_table  # noqa: E402
from vidssl.retrieval import nearest  # noqa: E402

QUERIES, GALLERY, DIM, CLIPS, K = 3783, 9537, 9216, 10, 50


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def features(n: int, seed: int) -> torch.Tensor:
    """Non-negative like post-ReLU conv5 features, in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g).relu_()


def one(method: str, queries: int, gallery: int) -> dict:
    """Run one search in this process; returns seconds, peak MB above the features, top-k indices."""
    q, g = features(queries, 1), features(gallery, 2)
    base = rss_mb()
    t = time.perf_counter()
    if method == "vidssl":
        idx = nearest(q, g, K)[1].numpy()
    else:
        from sklearn.metrics.pairwise import cosine_distances

        d = cosine_distances(q.numpy(), g.numpy())
        idx = np.argsort(d, axis=1)[:, :K]
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"seconds": seconds, "peak_mb": peak - base, "idx": idx[:200].tolist()}


def run_child(method: str, queries: int, gallery: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", method, "--q", str(queries), "--g", str(gallery)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip-queries", type=int, default=QUERIES, help="query clips actually run at clip level")
    p.add_argument("--json", default="bench/results/retrieval.json", help="where to write the results")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--q", type=int, help=argparse.SUPPRESS)
    p.add_argument("--g", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.q, args.g)))
        return

    rows = []
    video = {m: run_child(m, QUERIES, GALLERY) for m in ("reference", "vidssl")}
    same = np.mean([len(set(a) & set(b)) / K for a, b in zip(video["reference"]["idx"], video["vidssl"]["idx"])])
    for m, r in video.items():
        rows.append(
            {
                "level": "video",
                "method": m,
                "queries x gallery": f"{QUERIES:,} x {GALLERY:,}",
                "seconds": r["seconds"],
                "peak MB": r["peak_mb"],
            }
        )
    nq, ng = args.clip_queries, GALLERY * CLIPS
    clip = {m: run_child(m, nq, ng) for m in ("reference", "vidssl")}
    scale = QUERIES * CLIPS / nq
    full_ref_mb = QUERIES * CLIPS * ng * (4 + 8) / 2**20  # float32 distances + int64 argsort
    for m, r in clip.items():
        rows.append(
            {
                "level": "clip",
                "method": m,
                "queries x gallery": f"{QUERIES * CLIPS:,} x {ng:,}",
                "seconds": r["seconds"] * scale,
                "peak MB": full_ref_mb if m == "reference" else r["peak_mb"],
                "note": (f"scaled from {nq:,} queries" if scale != 1 else "")
                + (f"; memory: full matrix + argsort (ran {r['peak_mb']:.0f} MB)" if m == "reference" else ""),
            }
        )
    for level in ("video", "clip"):
        ref = next(r for r in rows if r["level"] == level and r["method"] == "reference")
        for r in rows:
            if r["level"] == level:
                r["x reference"] = ref["seconds"] / r["seconds"]
    print(
        f"cosine top-{K} retrieval, {DIM}-d float32 features; {os.cpu_count()} cores; torch {torch.__version__}; "
        f"top-{K} lists agree with the reference's on {100 * same:.1f}% of their entries (first 200 video queries)"
    )
    print(format_table(rows, ["level", "method", "queries x gallery", "seconds", "x reference", "peak MB", "note"]))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "same_top50": same}, f, indent=1)


if __name__ == "__main__":
    main()
