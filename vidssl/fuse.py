"""`vidssl fuse`: late fusion of two fine-tuned models' video scores (3DRotNet Table 7, RGB + DIF)."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .config import FuseConfig


def geometric_fusion(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Normalised geometric mean of two probability tables ``(V, C)``."""
    fused = (p.clamp_min(1e-12).log() + q.clamp_min(1e-12).log()).mul(0.5).exp()
    return fused / fused.sum(1, keepdim=True)


def load_scores(path: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(video probabilities (V, C), labels, video names) of a fine-tuning run."""
    if os.path.isdir(path):
        path = os.path.join(path, "scores.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no scores; pass a fine-tuning run folder (OUT/seedN) or its scores file")
    try:
        t = load_file(path)
        with safe_open(path, "pt") as f:
            names = json.loads(f.metadata()["videos"])
        probs, labels = t["clip_probs"].mean(1), t["labels"]
    except Exception as e:  # safetensors' own errors, a missing key, bad JSON: all "not a scores file"
        raise ValueError(
            f"{path}: not a fine-tuning scores file ({str(e)[:80]}); pass OUT/seedN of a finetune run"
        ) from None
    if not torch.isfinite(probs).all():
        raise FloatingPointError(f"{path}: the scores hold NaN/inf; the model that made them diverged")
    return probs, labels, names


def fuse(cfg: FuseConfig) -> dict:
    pa, la, na = load_scores(cfg.a)
    pb, lb, nb = load_scores(cfg.b)
    if na != nb or not torch.equal(la, lb):
        raise ValueError(f"{cfg.a} and {cfg.b} scored different test videos; fuse runs on the same split")
    if pa.shape != pb.shape:
        raise ValueError(f"{cfg.a} has {pa.shape[1]} classes, {cfg.b} has {pb.shape[1]}")
    acc = lambda p: (p.argmax(1) == la).float().mean().item()
    result = {"a": acc(pa), "b": acc(pb), "fused": acc(geometric_fusion(pa, pb)), "videos": len(la)}
    out = cfg.out or (cfg.a if os.path.isdir(cfg.a) else os.path.dirname(cfg.a))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "fusion.json"), "w") as f:
        json.dump({**result, "a_path": cfg.a, "b_path": cfg.b}, f, indent=1)
    return result
