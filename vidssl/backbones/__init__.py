"""3D CNN backbones as plain ``nn.Module``s, and a registry to build them by name.

Every backbone takes clips ``(B, 3, T, H, W)`` and returns a pooled feature ``(B, num_features)``
(adaptive average pooling, so any clip size works); the classifier is not part of it. Each also has
- ``forward_features(x)``: the conv5 map before pooling, ``(B, C, T', H', W')``;
- ``block_names``: its blocks ``conv1`` .. ``conv5``, attributes of the module, in order, so that
  fine-tuning can freeze everything before ``conv_k`` (3DRotNet Fig. 4a);
- ``first_conv``: its first ``nn.Conv3d`` (kernel pictures, attention maps).
``width`` scales every channel count (0.25 gives CPU-sized versions of the same architectures).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Add a backbone factory ``fn(width=1.0) -> nn.Module`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def names() -> list[str]:
    return list(_REGISTRY)


def build(name: str, width: float = 1.0) -> nn.Module:
    """A backbone by name, e.g. ``build("r3d_18", width=0.25)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(_REGISTRY)}")
    if not width > 0:
        raise ValueError(f"width must be positive, not {width}")
    return _REGISTRY[name](width=width)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Under CPU bf16 autocast these blocks run in fp32: oneDNN's bf16 weight-gradient kernels for their
# small feature maps gave different results on the same batch (and now and then inf), measured on
# torch 2.13 (README, performance notes); in fp32 the step is deterministic and no slower there.
FP32_BLOCKS_ON_CPU = ("conv4", "conv5")


def run_blocks(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv1`` .. ``conv5`` of a backbone in order: its conv5 feature map."""
    cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    for name in model.block_names:
        block = getattr(model, name)
        if cpu_bf16 and name in FP32_BLOCKS_ON_CPU:
            with torch.autocast("cpu", enabled=False):
                x = block(x.float())
        else:
            x = block(x)
    return x


def retrieval_feature(conv5: torch.Tensor) -> torch.Tensor:
    """VCOP's retrieval feature (section 4.1): conv5 max-pooled by (1, 2, 2) and flattened.

    For a 16x112x112 clip, 512 x 2 x 7 x 7 -> 512 x 2 x 3 x 3 = 9216 values."""
    return F.max_pool3d(conv5, kernel_size=(1, 2, 2)).flatten(1)


# The families register themselves on import.
from . import c3d, resnet3d  # noqa: E402,F401
