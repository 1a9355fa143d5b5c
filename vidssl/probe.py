"""`vidssl probe`: a linear classifier and a k-NN classifier on frozen features (beyond the papers).

Features are the pooled vector, averaged over each video's clips, computed once and cached.
Both classifiers are pure functions over tensors."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F


def knn_classify(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class predictions by cosine k-NN with similarity-weighted votes (exp(sim / T), as DINO's)."""
    from .retrieval import nearest

    num_classes = num_classes or int(train_labels.max()) + 1
    sims, idx = nearest(test, train, k)
    votes = torch.zeros(len(test), num_classes)
    votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
    return votes.argmax(1)


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-3,
    steps: int = 200,
) -> torch.Tensor:
    """Class predictions of a multinomial logistic regression fitted by L-BFGS on standardised features."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    x, xt = (train - mean) / std, (test - mean) / std
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_labels) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xt @ w + b).argmax(1)


@dataclass
class ProbeConfig:
    dataset: str  # labelled dataset (train split fits, test split scores)
    init: str = "random"  # a pretraining checkpoint, or random
    out: str = "runs/probe"  # output folder: probe.json and the cached features
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # dataset layout
    split: int = 1  # official split
    cache: str | None = None  # frame cache
    clips: int = 10  # clips per video (features averaged)
    clip_length: int | None = None  # frames per clip (default: the checkpoint's, else 16)
    frame_size: tuple[int, int] | None = (128, 171)  # HxW frames are resized to
    crop: int = 112  # centre crop side
    backbone: str = "r3d_10"  # backbone for --init random
    width: float = 1.0  # width for --init random
    k: int = 20  # neighbours of the k-NN classifier
    weight_decay: float = 1e-3  # L2 penalty of the linear probe
    batch_size: int = 4  # videos per batch
    seed: int = 0  # seed of the random initialisation
    progress: bool = True  # progress bars


def probe(cfg: ProbeConfig) -> dict:
    from .retrieval import RetrieveConfig, _features, _source

    shared = {
        k: getattr(cfg, k)
        for k in (
            "dataset",
            "init",
            "out",
            "kind",
            "split",
            "cache",
            "clips",
            "clip_length",
            "frame_size",
            "crop",
            "backbone",
            "width",
            "batch_size",
            "seed",
            "progress",
        )
    }
    rcfg = RetrieveConfig(**shared, feature="pooled")
    backbone, modality, frames, meta = _source(rcfg)
    test, test_labels, test_ds = _features(
        rcfg, backbone, modality, frames, cfg.dataset, cfg.cache, "test", "query", meta
    )
    train, train_labels, _ = _features(
        rcfg, backbone, modality, frames, cfg.dataset, cfg.cache, "train", "gallery", meta
    )
    train, test = train.mean(1), test.mean(1)
    n = len(test_ds.classes)
    acc = lambda pred: (pred == test_labels).float().mean().item()
    result = {
        "linear_top1": acc(linear_probe(train, train_labels, test, n, cfg.weight_decay)),
        "knn_top1": acc(knn_classify(train, train_labels, test, cfg.k, num_classes=n)),
        "train_videos": len(train),
        "test_videos": len(test),
        "feature_dim": train.shape[1],
        "config": asdict(cfg),
    }
    with open(os.path.join(cfg.out, "probe.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result
