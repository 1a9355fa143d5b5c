"""`vidssl probe`: a linear classifier and a k-NN classifier on frozen features (beyond the papers).

Features are the pooled vector, averaged over each video's clips, computed once and cached.
Both classifiers are pure functions over tensors."""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from .config import ProbeConfig, check_ranges, to_plain, write_config
from .similarity import nearest


def knn_classify(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Class predictions by cosine k-NN with similarity-weighted votes (exp(sim / T), as DINO's)."""
    num_classes = num_classes or int(train_labels.max()) + 1
    sims, idx = nearest(test, train, k)
    votes = torch.zeros(len(test), num_classes)
    votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
    return votes.argmax(1)


def normalise(train: torch.Tensor, test: torch.Tensor, how: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Features as the k-NN classifier compares them. ``center``: minus the training mean
    (SimpleShot's CL2N: cosine after centring); ``standardize``: per dimension, as the linear probe
    sees them. Post-ReLU pooled features share a large mean direction that raw cosine is dominated
    by: on the Weizmann validation persons centring raised pretrained 5-NN by 8 points and not
    random weights' (docs/weizmann.md)."""
    if how == "none":
        return train, test
    mean = train.mean(0)
    if how == "center":
        return train - mean, test - mean
    if how == "standardize":
        std = train.std(0).clamp_min(1e-6)
        return (train - mean) / std, (test - mean) / std
    raise ValueError(f"unknown normalisation {how!r}; choose none, center or standardize")


def linear_probe(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-3,
    steps: int = 200,
    progress: bool = False,
) -> torch.Tensor:
    """Class predictions of a multinomial logistic regression fitted by L-BFGS on standardised features
    (``progress``: a bar over its function evaluations, at most 1.25 x ``steps``)."""
    from tqdm import tqdm

    x, xt = normalise(train, test, "standardize")
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    bar = tqdm(total=steps * 5 // 4, desc="linear probe fit", disable=not progress, leave=False)  # L-BFGS max_eval

    def closure():
        bar.update()
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, train_labels) + weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    bar.close()
    with torch.no_grad():
        return (xt @ w + b).argmax(1)


def probe(cfg: ProbeConfig) -> dict:
    """Fit both classifiers on the training videos' features, score the test videos; writes probe.json."""
    from .features import describe_encoder, open_encoder, prepare_encoder, video_features
    from .runs import claim
    from .runtime import Runtime, launched_main

    check_ranges(cfg)
    claim(cfg.out, cfg, command="probe", overwrite=cfg.overwrite, rerun_ok=True, main=launched_main())
    rt = Runtime.setup(cfg)
    backbone, info = open_encoder(cfg)
    prepare_encoder(backbone, info, cfg, cache=cfg.cache, kind=cfg.kind, runtime=rt)
    if rt.main:
        write_config(cfg, cfg.out, "probe")
    common = dict(
        cache=cfg.cache, kind=cfg.kind, feature=cfg.feature, runtime=rt, source=describe_encoder(cfg, info, backbone)
    )
    saved = lambda tag: os.path.join(cfg.out, f"features_{tag}.safetensors")
    test, test_labels, test_ds = video_features(
        backbone, info, cfg, cfg.dataset, "test", save_as=saved("query"), **common
    )
    rt.announce()
    train, train_labels, _ = video_features(
        backbone, info, cfg, cfg.dataset, "train", save_as=saved("gallery"), **common
    )
    train, test = train.mean(1), test.mean(1)
    n = len(test_ds.classes)
    acc = lambda pred: (pred == test_labels).float().mean().item()
    knn_train, knn_test = normalise(train, test, cfg.knn_norm)
    result = {
        "linear_top1": acc(linear_probe(train, train_labels, test, n, cfg.weight_decay, progress=cfg.progress)),
        "knn_top1": acc(knn_classify(knn_train, train_labels, knn_test, cfg.k, num_classes=n)),
        "train_videos": len(train),
        "test_videos": len(test),
        "feature_dim": train.shape[1],
        "config": to_plain(cfg),
    }
    if rt.main:
        with open(os.path.join(cfg.out, "probe.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result
