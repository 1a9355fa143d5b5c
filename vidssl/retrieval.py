"""Nearest-neighbour video retrieval (VCOP section 4.1) and `vidssl retrieve`.

Test videos query training videos by cosine similarity; a query hits at k when any of its k
nearest gallery items has its class. Clip level: every clip of every query video queries all
gallery clips. Video level: each video is the mean of its clips' features. Every video counts.
"""

from __future__ import annotations

import json
import os

from .config import RetrieveConfig, check_ranges, to_plain, write_config
from .similarity import KS, clip_and_video_retrieval, nearest, topk_retrieval

__all__ = ["KS", "RetrieveConfig", "clip_and_video_retrieval", "nearest", "retrieve", "topk_retrieval"]


LEVELS = {
    "video": "the mean of each video's clip features, then searched: VCOP Tables 2-3 (its retrieve_clips.py)",
    "clip": "every clip searched against every training clip (stricter than the papers' tables)",
}


def retrieve(cfg: RetrieveConfig) -> dict:
    """Run retrieval; writes ``results.json`` and ``neighbours.csv`` in ``cfg.out`` and returns the results.

    The levels: "video" averages each video's clip features before searching (VCOP's Tables 2-3,
    its retrieve_clips.py); "clip" searches every clip against every training clip."""
    from .features import describe_encoder, open_encoder, prepare_encoder, video_features
    from .runs import claim
    from .runtime import Runtime, launched_main

    check_ranges(cfg)
    claim(cfg.out, cfg, command="retrieve", overwrite=cfg.overwrite, rerun_ok=True, main=launched_main())
    rt = Runtime.setup(cfg)
    backbone, info = open_encoder(cfg)
    prepare_encoder(backbone, info, cfg, cache=cfg.cache, kind=cfg.kind, runtime=rt)
    source = describe_encoder(cfg, info, backbone)
    if rt.main:
        write_config(cfg, cfg.out, "retrieve")
    common = dict(feature=cfg.feature, runtime=rt, source=source)
    q, ql, qds = video_features(
        backbone, info, cfg, cfg.dataset, "test", cache=cfg.cache, kind=cfg.kind,
        save_as=os.path.join(cfg.out, "features_query.safetensors"), **common,
    )  # fmt: skip
    rt.announce()
    gpath, gcache = (cfg.gallery, cfg.gallery_cache) if cfg.gallery else (cfg.dataset, cfg.cache)
    g, gl, gds = video_features(
        backbone, info, cfg, gpath, "train", cache=gcache, kind="auto" if cfg.gallery else cfg.kind,
        save_as=os.path.join(cfg.out, "features_gallery.safetensors"), **common,
    )  # fmt: skip
    results = {
        "config": to_plain(cfg),
        "source": source,
        "query_videos": len(ql),
        "gallery_videos": len(gl),
        "feature_dim": q.shape[-1],
        "skipped": {"query": len(qds.skipped), "gallery": len(gds.skipped)},  # unreadable or bad entries
    }
    if cfg.gallery is None:  # same label space: accuracy at both levels
        results.update(clip_and_video_retrieval(q, g, ql, gl))
        results["levels"] = LEVELS
    if rt.main:
        _write_neighbours(os.path.join(cfg.out, "neighbours.csv"), q.mean(1), g.mean(1), qds, gds, cfg.neighbours)
        with open(os.path.join(cfg.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


def _write_neighbours(path, q, g, qds, gds, k):
    """Each query video's nearest gallery videos: names, classes, similarity (VCOP Fig. 4/6 as a table)."""
    import csv

    sims, idx = nearest(q, g, k)
    qc = lambda i: qds.classes[qds.records[i].label] if qds.classes and qds.records[i].label >= 0 else ""
    gc = lambda i: gds.classes[gds.records[i].label] if gds.classes and gds.records[i].label >= 0 else ""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "query_class", "rank", "neighbour", "neighbour_class", "similarity"])
        for i in range(len(q)):
            for r in range(idx.shape[1]):
                j = int(idx[i, r])
                w.writerow([qds.records[i].rel, qc(i), r + 1, gds.records[j].rel, gc(j), f"{sims[i, r]:.4f}"])
