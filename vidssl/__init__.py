"""vidssl: self-supervised spatiotemporal feature learning from unlabelled video.

from vidssl import PretrainConfig, pretrain
best = pretrain(PretrainConfig("data/synth", task="rotation", width=0.25, iters=1000))
"""

__version__ = "0.1.0"

from .pretrain import PretrainConfig, pretrain  # noqa: E402

__all__ = ["PretrainConfig", "pretrain", "__version__"]
