"""`vidssl info`: every backbone's size and cost at a clip size (parameters, FLOPs, feature shapes)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import backbones
from .config import InfoConfig


def backbone_info(name: str, frames: int = 16, size=(112, 112), width: float = 1.0) -> dict:
    """Parameters, forward FLOPs per clip (2 x multiply-adds, torch.utils.flop_counter), feature sizes.

    Built and run on the meta device: no memory, no compute, any size."""
    with torch.device("meta"):
        model = backbones.build(name, width).eval()
        x = torch.empty(1, 3, frames, *size)
        with FlopCounterMode(display=False) as counter:
            fmap = model.forward_features(x)
        pooled = model(x)
    return {
        "backbone": name,
        "params": backbones.num_params(model),
        "gflops": counter.get_total_flops() / 1e9,
        "feature": pooled.shape[1],
        "conv5": "x".join(map(str, fmap.shape[1:])),
        "retrieval": backbones.retrieval_feature(fmap).shape[1],
    }


def info(cfg: InfoConfig) -> list[dict]:
    if cfg.frames < 1 or min(cfg.size) < 1:
        raise ValueError(f"clip size must be positive, not {cfg.frames}x{cfg.size[0]}x{cfg.size[1]}")
    names = [cfg.backbone] if cfg.backbone else backbones.names()
    return [backbone_info(n, cfg.frames, cfg.size, cfg.width) for n in names]
