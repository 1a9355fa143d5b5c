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

import typing
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..fields import FeatureKind

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
# torch 2.13 (docs/performance.md); in fp32 the step is deterministic and no slower there.
FP32_BLOCKS_ON_CPU = ("conv4", "conv5")


def run_blocks(model: nn.Module, x: torch.Tensor, last: str = "conv5") -> torch.Tensor:
    """``conv1`` .. ``last`` of a backbone in order: that block's feature map (conv5 by default).

    With ``model.grad_checkpointing`` set (set_grad_checkpointing), each trainable block keeps only
    its input during training and recomputes its inside in the backward pass: less memory for
    about one more forward pass of time."""
    cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    save_memory = getattr(model, "grad_checkpointing", False) and model.training and torch.is_grad_enabled()
    for name in model.block_names:
        block = getattr(model, name)
        fp32 = cpu_bf16 and name in FP32_BLOCKS_ON_CPU
        trainable = any(p.requires_grad for p in block.parameters())
        if save_memory and (trainable or x.requires_grad):
            # Residual stages are checkpointed block by block: recomputing a whole stage at once
            # would hold all its insides again (measured: r3d_18 rotation 6.0 -> 5.4 GB only).
            units = list(block) if all(getattr(u, "checkpoint_unit", False) for u in block.children()) else [block]
            for unit in units:
                x = checkpoint(_Recompute(unit, fp32), x, use_reentrant=False)
        else:
            x = _run(block, x, fp32)
        if name == last:
            break
    return x


def _run(block: nn.Module, x: torch.Tensor, fp32: bool) -> torch.Tensor:
    if fp32:
        with torch.autocast("cpu", enabled=False):
            return block(x.float())
    return block(x)


class _Recompute:
    """A block for torch.utils.checkpoint whose second call (the recomputation in backward) puts the
    batch-norm running statistics back, so a checkpointed step updates them exactly once, as
    an ordinary step does (plain checkpointing would apply the momentum update twice)."""

    def __init__(self, block: nn.Module, fp32: bool):
        self.block, self.fp32, self.calls = block, fp32, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return _run(self.block, x, self.fp32)
        stats = [b for m in self.block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
        saved = [b.clone() for b in stats]
        try:
            return _run(self.block, x, self.fp32)
        finally:
            for b, old in zip(stats, saved):
                b.copy_(old)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> nn.Module:
    """Recompute each block's activations in backward instead of storing them (see run_blocks)."""
    model.grad_checkpointing = enable
    return model


def retrieval_feature(conv5: torch.Tensor) -> torch.Tensor:
    """VCOP's retrieval feature (section 4.1): conv5 max-pooled by (1, 2, 2) and flattened.

    For a 16x112x112 clip, 512 x 2 x 7 x 7 -> 512 x 2 x 3 x 3 = 9216 values."""
    return F.max_pool3d(conv5, kernel_size=(1, 2, 2)).flatten(1)


FEATURES = typing.get_args(FeatureKind)  # the names the configs accept, written once in fields


def check_feature(kind: str) -> None:
    """Refuse a feature name clip_feature does not know (before any video is read)."""
    if kind not in FEATURES:
        raise ValueError(f"unknown feature {kind!r}; choose one of {', '.join(FEATURES)}")


def clip_feature(model: nn.Module, x: torch.Tensor, kind: str = "pooled") -> torch.Tensor:
    """``(B, D)`` features of a batch of clips.

    ``pooled``: conv5 global-average-pooled (the backbone's output); ``vcop``: conv5 max-pooled
    (retrieval_feature); ``conv2`` .. ``conv4``: that block's map, global-average-pooled, the network
    stopped there. Earlier blocks are less specific to the pretext (docs/weizmann.md measures them)."""
    check_feature(kind)
    if kind in ("pooled", "vcop"):
        fmap = model.forward_features(x)
        return retrieval_feature(fmap) if kind == "vcop" else fmap.mean(dim=(2, 3, 4))
    return run_blocks(model, x, last=kind).mean(dim=(2, 3, 4))


# The families register themselves on import.
from . import c3d, resnet3d  # noqa: E402,F401
