"""Features of a backbone for whole videos (K clips each), and their cache on disk.

``extract_features`` is the one place a network meets an evaluation; everything after it
(retrieval, probes, kNN) is a pure function over tensors.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm import tqdm

from .atomic import write_atomic
from .backbones import retrieval_feature
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.transforms import memory_format, to_input

FEATURES = ("vcop", "pooled")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset,
    feature: str = "pooled",
    modality: str = "rgb",
    batch_size: int = 4,
    workers: int = 0,
    device="cpu",
    bf16: bool = False,
    progress: bool = True,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, K, D)`` float32 features of every video's K clips, and ``(V,)`` labels.

    ``feature="pooled"``: the global-average-pooled vector (512 at full width); ``"vcop"``: conv5
    max-pooled by (1,2,2) and flattened (VCOP 4.1; 9216 for 16x112x112). Every video is counted:
    the loader never drops a last partial batch. A video that fails to decode is left out with a
    warning and removed from ``dataset`` (``dataset.forget``), so its records match the rows."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
    backbone.eval().to(device)
    if channels_last:  # 1.1-1.2x faster inference on CPU (bench/train_step.py)
        backbone.to(memory_format=torch.channels_last_3d)
    loader = data_loader(dataset, batch_size, shuffle=False, drop_last=False, num_workers=workers)
    feats, labels, failed, failures = [], [], [], FailureLog()
    device = torch.device(device)
    for clips, y, _, bad in tqdm(loader, desc="features", disable=not progress, leave=False):
        failures.note(bad)
        failed += bad
        if len(clips) == 0:
            continue
        if clips.dim() == 5:  # one clip per video
            clips = clips.unsqueeze(1)
        b, k = clips.shape[:2]
        x = memory_format(to_input(clips.flatten(0, 1).to(device), modality), channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fmap = backbone.forward_features(x)
        f = retrieval_feature(fmap) if feature == "vcop" else fmap.mean(dim=(2, 3, 4))
        feats.append(f.float().view(b, k, -1).cpu())
        labels.append(torch.as_tensor(y))
    dataset.forget(failed)
    if not feats:
        raise ValueError(f"{getattr(dataset, 'root', 'dataset')}: no video could be decoded")
    return torch.cat(feats), torch.cat(labels)


def save_features(path: str, feats: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """Features, labels and what made them (JSON in the safetensors metadata)."""
    tensors = {"features": feats.contiguous(), "labels": labels.contiguous()}
    write_atomic(path, lambda f: f.write(save(tensors, metadata={"meta": json.dumps(meta)})))


def load_features(path: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: feature file not found")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata().get("meta", "{}"))
    t = load_file(path)
    return t["features"], t["labels"], meta
