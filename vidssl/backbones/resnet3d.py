"""Video ResNets built from small convolution builders, as torchvision's video ResNets are.

- ``r3d_10`` / ``r21d_10``: the clip-order paper's R3D and R(2+1)D (VCOP, section 4): a 3x7x7 stem
  with stride (1,2,2) and no max-pool, one basic block per stage, projection shortcuts.
  R(2+1)D factorises every 3D conv t x d x d into a spatial 1 x d x d conv, BN, ReLU and a temporal
  t x 1 x 1 conv with M = floor(t d^2 Nin Nout / (d^2 Nin + t Nout)) mid channels, so that its
  parameter count matches the 3D conv (Tran et al., "A closer look at spatiotemporal convolutions");
  the stem and the 1x1x1 projections are factorised the same way.
- ``r3d_18``: two blocks per stage, otherwise as r3d_10 (torchvision's r3d_18 without its fc).
- ``r2plus1d_18``: torchvision's r2plus1d_18 without its fc, so that its Kinetics-400 weights load
  (``vidssl convert``): a 45-channel (2+1)D stem, both convs of a block factorised with the mid
  channels of the block's first conv (torchvision's choice), plain 1x1x1 projections.
- ``resnet18_3d``: the 3D-ResNet-18 of 3DRotNet (Hara et al.'s "3D ResNets"): a 7x7x7 stem with
  stride (1,2,2), BN, ReLU and a 3x3x3 max-pool with stride 2; two blocks per stage; parameter-free
  type-A shortcuts (strided identity, zero-padded channels).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import register, run_blocks

Builder = Callable[[int, int, tuple, tuple, tuple], nn.Module]


def conv3d(cin: int, cout: int, kernel: tuple, stride: tuple, padding: tuple) -> nn.Module:
    return nn.Conv3d(cin, cout, kernel, stride, padding, bias=False)


def conv2plus1d(cin: int, cout: int, kernel: tuple, stride: tuple, padding: tuple, mid: int | None = None) -> nn.Module:
    t, d = kernel[0], kernel[1]
    mid = mid or (t * d * d * cin * cout) // (d * d * cin + t * cout)
    return nn.Sequential(
        nn.Conv3d(cin, mid, (1, d, d), (1, stride[1], stride[2]), (0, padding[1], padding[2]), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (t, 1, 1), (stride[0], 1, 1), (padding[0], 0, 0), bias=False),
    )


class ShortcutA(nn.Module):
    """Parameter-free shortcut: strided identity with zero-padded extra channels (Hara et al., type A)."""

    def __init__(self, cout: int, stride: int):
        super().__init__()
        self.cout, self.stride = cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = x[:, :, ::s, ::s, ::s]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.cout - x.shape[1]))


class BasicBlock(nn.Module):
    checkpoint_unit = True  # --grad-checkpointing recomputes one block at a time

    def __init__(self, cin: int, cout: int, stride: int, conv: Builder, shortcut: str, block_mid: bool = False):
        super().__init__()
        s = (stride,) * 3
        if block_mid:  # torchvision's R(2+1)D: conv2 keeps conv1's mid channels
            conv = partial(conv, mid=(cin * cout * 27) // (cin * 9 + 3 * cout))
        self.conv1 = conv(cin, cout, (3, 3, 3), s, (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = conv(cout, cout, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(cout, stride)
        else:  # "B": projection by a 1x1x1 conv (of the block's kind; "B3d": always 3D) and BN
            proj = conv3d if shortcut == "B3d" else conv
            self.shortcut = nn.Sequential(proj(cin, cout, (1, 1, 1), s, (0, 0, 0)), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class VideoResNet(nn.Module):
    """Stem ``conv1`` and four stages ``conv2`` .. ``conv5`` of ``blocks`` basic blocks each."""

    block_names = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(
        self, stem: nn.Module, blocks: int, conv: Builder, shortcut: str, width: float, block_mid: bool = False
    ):
        super().__init__()
        chans = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.conv1 = stem
        cin = chans[0]
        for i, cout in enumerate(chans):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(cin, cout, stride, conv, shortcut, block_mid)]
            layers += [BasicBlock(cout, cout, 1, conv, shortcut, block_mid) for _ in range(blocks - 1)]
            setattr(self, f"conv{i + 2}", nn.Sequential(*layers))
            cin = cout
        self.num_features = chans[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def first_conv(self) -> nn.Conv3d:
        return next(m for m in self.conv1.modules() if isinstance(m, nn.Conv3d))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


def _vcop_stem(conv: Builder, width: float) -> nn.Module:
    c = max(1, round(64 * width))
    return nn.Sequential(conv(3, c, (3, 7, 7), (1, 2, 2), (1, 3, 3)), nn.BatchNorm3d(c), nn.ReLU(inplace=True))


@register
def r3d_10(width: float = 1.0) -> VideoResNet:
    return VideoResNet(_vcop_stem(conv3d, width), 1, conv3d, "B", width)


@register
def r21d_10(width: float = 1.0) -> VideoResNet:
    return VideoResNet(_vcop_stem(conv2plus1d, width), 1, conv2plus1d, "B", width)


@register
def r3d_18(width: float = 1.0) -> VideoResNet:
    return VideoResNet(_vcop_stem(conv3d, width), 2, conv3d, "B", width)


@register
def r2plus1d_18(width: float = 1.0) -> VideoResNet:
    mid, c = max(1, round(45 * width)), max(1, round(64 * width))
    stem = nn.Sequential(
        nn.Conv3d(3, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, c, (3, 1, 1), 1, (1, 0, 0), bias=False),
        nn.BatchNorm3d(c),
        nn.ReLU(inplace=True),
    )
    return VideoResNet(stem, 2, conv2plus1d, "B3d", width, block_mid=True)


@register
def resnet18_3d(width: float = 1.0) -> VideoResNet:
    c = max(1, round(64 * width))
    stem = nn.Sequential(
        nn.Conv3d(3, c, 7, (1, 2, 2), 3, bias=False),
        nn.BatchNorm3d(c),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(3, 2, 1),
    )
    return VideoResNet(stem, 2, conv3d, "A", width)
