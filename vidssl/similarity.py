"""Cosine nearest neighbours over feature tensors: the pure maths of retrieval and k-NN probes.

No network and no video here: ``(N, D)`` tensors in, similarities, indices and accuracies out.
"""

from __future__ import annotations

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
