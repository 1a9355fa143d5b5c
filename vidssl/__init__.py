"""vidssl: self-supervised spatiotemporal feature learning from unlabelled video.

from vidssl import PretrainConfig, pretrain
best = pretrain(PretrainConfig("data/synth", task="rotation", width=0.25, iters=1000))
"""

__version__ = "0.1.0"

# Loaded on first use, so that `vidssl --help` does not import torch.
_LAZY = {
    "PretrainConfig": "vidssl.config",
    "FinetuneConfig": "vidssl.config",
    "RetrieveConfig": "vidssl.config",
    "pretrain": "vidssl.pretrain",
    "finetune": "vidssl.finetune",
    "retrieve": "vidssl.retrieval",
    "load_encoder": "vidssl.checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidssl' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
