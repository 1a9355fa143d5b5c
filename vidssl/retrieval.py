"""Nearest-neighbour video retrieval (VCOP section 4.1) and `vidssl retrieve`.

Test videos query training videos by cosine similarity; a query hits at k when any of its k
nearest gallery items has its class. Clip level: every clip of every query video queries all
gallery clips. Video level: each video is the mean of its clips' features. Every video counts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F

KS = (1, 5, 10, 20, 50)


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, indices) of the ``k`` most cosine-similar gallery rows for every query row.

    Chunked over queries, so memory stays at ``chunk x len(gallery)`` whatever the sizes. The
    gallery is not copied to normalise it (at UCF101's clip level that copy alone is 3.5 GB): each
    chunk's dot products are divided by the gallery norms instead."""
    g = gallery.float()
    inv_norm = 1 / g.norm(dim=1).clamp_min(1e-12)
    k = min(k, len(g))
    sims, idx = [], []
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start : start + chunk].float(), dim=1)
        s, i = ((q @ g.T) * inv_norm).topk(k, dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def topk_retrieval(
    query: torch.Tensor,
    gallery: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks=KS,
    chunk: int = 1024,
) -> dict[int, float]:
    """Top-k retrieval accuracy: the share of queries with a same-class item among their k nearest."""
    _, idx = nearest(query, gallery, max(ks), chunk)
    hits = gallery_labels[idx] == query_labels[:, None]  # (Q, kmax)
    return {k: hits[:, :k].any(1).float().mean().item() for k in ks}


def clip_and_video_retrieval(
    query: torch.Tensor, gallery: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor, ks=KS
) -> dict[str, dict[int, float]]:
    """Both levels from ``(V, K, D)`` features: clips against clips, video means against video means."""
    kq, kg = query.shape[1], gallery.shape[1]
    clip = topk_retrieval(
        query.flatten(0, 1),
        gallery.flatten(0, 1),
        query_labels.repeat_interleave(kq),
        gallery_labels.repeat_interleave(kg),
        ks,
    )
    video = topk_retrieval(query.mean(1), gallery.mean(1), query_labels, gallery_labels, ks)
    return {"clip": clip, "video": video}


@dataclass
class RetrieveConfig:
    dataset: str  # dataset whose test videos query its training videos
    init: str = "random"  # a pretraining checkpoint, or random (the baseline)
    out: str = "runs/retrieve"  # output folder: results.json, features, neighbours.csv
    gallery: str | None = None  # another dataset whose training videos form the gallery (cross-dataset)
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # dataset layout
    split: int = 1  # official split
    cache: str | None = None  # frame cache of the query dataset
    gallery_cache: str | None = None  # frame cache of the gallery dataset
    feature: Literal["vcop", "pooled"] = "vcop"  # vcop: conv5 max-pooled (9216-d at 16x112x112); pooled: 512-d
    clips: int = 10  # clips per video, evenly spaced, centre crop
    clip_length: int | None = None  # frames per clip (default: the checkpoint's, else 16)
    frame_size: tuple[int, int] | None = (128, 171)  # HxW frames are resized to (VCOP 128x171)
    crop: int = 112  # centre crop side
    backbone: str = "r3d_10"  # backbone for --init random
    width: float = 1.0  # width for --init random
    batch_size: int = 4  # videos per batch
    workers: int = 0  # DataLoader workers
    channels_last: bool = True  # channels_last_3d memory (1.1-1.2x faster features on CPU at 16x112x112)
    reuse_features: bool = True  # read cached features from OUT when they match these settings
    neighbours: int = 5  # nearest neighbours listed per query in neighbours.csv
    seed: int = 0  # seed of the random initialisation
    progress: bool = True  # progress bars


def _features(cfg: RetrieveConfig, backbone, modality, clip_length, dataset_path, cache, subset, tag, meta):
    from .data.datasets import load_dataset
    from .data.sampling import UniformClips
    from .data.transforms import eval_transform
    from .features import extract_features, load_features, save_features

    path = os.path.join(cfg.out, f"features_{tag}.safetensors")
    ds = load_dataset(
        cfg.kind if tag == "query" else "auto",
        dataset_path,
        split=cfg.split,
        subset=subset,
        cache=cache,
        size=None if cache else cfg.frame_size,
        sampler=UniformClips(cfg.clips, clip_length),
        transform=eval_transform(cfg.crop),
        on_short="loop",
        progress=cfg.progress,
    )
    names = [r.rel for r in ds.records]
    want = {**meta, "dataset": os.path.abspath(dataset_path), "subset": subset, "videos": names}
    if cfg.reuse_features and os.path.isfile(path):
        feats, labels, have = load_features(path)
        if have == want:
            return feats, labels, ds
    feats, labels = extract_features(
        backbone,
        ds,
        cfg.feature,
        modality,
        cfg.batch_size,
        cfg.workers,
        progress=cfg.progress,
        channels_last=cfg.channels_last,
    )
    want["videos"] = [r.rel for r in ds.records]  # without any video that failed to decode
    save_features(path, feats, labels, want)
    return feats, labels, ds


def _source(cfg: RetrieveConfig):
    """(backbone, modality, frames per clip, description) for ``--init``: a checkpoint or random weights."""
    from . import backbones
    from .checkpoint import load_backbone

    os.makedirs(cfg.out, exist_ok=True)
    if cfg.init == "random":
        torch.manual_seed(cfg.seed)
        backbone, modality, clip_length = backbones.build(cfg.backbone, cfg.width), "rgb", cfg.clip_length or 16
        source = {"init": "random", "backbone": cfg.backbone, "width": cfg.width, "seed": cfg.seed}
    else:
        backbone, meta = load_backbone(cfg.init)
        modality = meta["config"].get("modality", "rgb")
        clip_length = cfg.clip_length or meta["config"].get("clip_length", 16)
        source = {"init": os.path.abspath(cfg.init), "step": meta.get("step")}
    clip_frames = clip_length + (1 if modality == "dif" else 0)
    meta = {
        **source,
        "feature": cfg.feature,
        "clips": cfg.clips,
        "clip_length": clip_length,
        "crop": cfg.crop,
        "frame_size": list(cfg.frame_size) if cfg.frame_size else None,
        "modality": modality,
    }
    return backbone, modality, clip_frames, meta


def retrieve(cfg: RetrieveConfig) -> dict:
    """Run retrieval; writes ``results.json`` and ``neighbours.csv`` in ``cfg.out`` and returns the results."""
    from .config import check_ranges

    check_ranges(cfg)
    backbone, modality, clip_frames, meta = _source(cfg)
    source = {k: v for k, v in meta.items() if k in ("init", "backbone", "width", "seed", "step")}
    q, ql, qds = _features(cfg, backbone, modality, clip_frames, cfg.dataset, cfg.cache, "test", "query", meta)
    gpath, gcache = (cfg.gallery, cfg.gallery_cache) if cfg.gallery else (cfg.dataset, cfg.cache)
    g, gl, gds = _features(cfg, backbone, modality, clip_frames, gpath, gcache, "train", "gallery", meta)
    results = {
        "config": asdict(cfg),
        "source": source,
        "query_videos": len(ql),
        "gallery_videos": len(gl),
        "feature_dim": q.shape[-1],
        "skipped": {"query": len(qds.skipped), "gallery": len(gds.skipped)},  # unreadable or bad entries
    }
    if cfg.gallery is None:  # same label space: accuracy at both levels
        results.update(clip_and_video_retrieval(q, g, ql, gl))
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
