"""C3D as the clip-order paper uses it (VCOP, section 4): eight 3x3x3 convolutions with bias, batch
normalisation after every one, global pooling in place of fc6/fc7. 27,661,440 parameters."""

from __future__ import annotations

import torch
from torch import nn

from . import register, run_blocks


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class C3D(nn.Module):
    block_names = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, width: float = 1.0):
        super().__init__()
        c = [max(1, round(k * width)) for k in (64, 128, 256, 512)]
        # pool1 keeps time (1,2,2); pool2-4 halve it. conv5 is left unpooled: its map is the feature map.
        # ceil_mode lets short clips (fewer than 8 frames) through; even sizes (16x112x112) are unchanged.
        self.conv1 = nn.Sequential(*_conv(3, c[0]), nn.MaxPool3d((1, 2, 2), (1, 2, 2)))
        self.conv2 = nn.Sequential(*_conv(c[0], c[1]), nn.MaxPool3d(2, 2, ceil_mode=True))
        self.conv3 = nn.Sequential(*_conv(c[1], c[2]), *_conv(c[2], c[2]), nn.MaxPool3d(2, 2, ceil_mode=True))
        self.conv4 = nn.Sequential(*_conv(c[2], c[3]), *_conv(c[3], c[3]), nn.MaxPool3d(2, 2, ceil_mode=True))
        self.conv5 = nn.Sequential(*_conv(c[3], c[3]), *_conv(c[3], c[3]))
        self.num_features = c[3]

    @property
    def first_conv(self) -> nn.Conv3d:
        return self.conv1[0]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return run_blocks(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


@register
def c3d(width: float = 1.0) -> C3D:
    return C3D(width)
