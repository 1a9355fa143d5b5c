"""Clip transforms on whole clip tensors ``(C, T, H, W)``: one set of parameters for every frame.

Spatial transforms work on uint8 clips in the data loader (4x less to move than float); conversion
to float, normalisation and frame difference (DIF) are applied to the batch, ideally on the device.
Random transforms draw from the explicit ``torch.Generator`` they are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Kinetics-400 RGB mean and std, the usual statistics for video models.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of every frame to ``size=(h, w)``; keeps the dtype (uint8 is rounded)."""
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    x = clip.float().permute(1, 0, 2, 3)  # frames as a batch: (T, C, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    x = x.permute(1, 0, 2, 3)
    return x.round().clamp(0, 255).to(clip.dtype) if clip.dtype == torch.uint8 else x.to(clip.dtype)


def crop(clip: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return clip[..., top : top + h, left : left + w]


def _check_fits(clip: torch.Tensor, size: tuple[int, int]) -> None:
    if clip.shape[-2] < size[0] or clip.shape[-1] < size[1]:
        raise ValueError(f"crop {size[0]}x{size[1]} is larger than the frames ({clip.shape[-2]}x{clip.shape[-1]})")


def center_crop(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    _check_fits(clip, size)
    top = (clip.shape[-2] - size[0]) // 2
    left = (clip.shape[-1] - size[1]) // 2
    return crop(clip, top, left, *size)


def normalize(clip: torch.Tensor, mean=KINETICS_MEAN, std=KINETICS_STD) -> torch.Tensor:
    """uint8 (or [0,255] float) clip(s) ``(..., C, T, H, W)`` -> float normalised per channel."""
    x = clip.float().div_(255.0) if clip.dtype == torch.uint8 else clip.float() / 255.0
    shape = (-1, 1, 1, 1)
    m = torch.tensor(mean, device=x.device).view(shape)
    s = torch.tensor(std, device=x.device).view(shape)
    return (x - m) / s


def frame_difference(clip: torch.Tensor) -> torch.Tensor:
    """DIF input of 3DRotNet: ``x[:, t+1] - x[:, t]`` along time; T frames give T-1 differences."""
    x = clip.float()
    return x[..., 1:, :, :] - x[..., :-1, :, :]


def _two_sizes(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


@dataclass
class Resize:
    size: tuple[int, int]

    def __call__(self, clip, g=None):
        return resize(clip, _two_sizes(self.size))


@dataclass
class RandomCrop:
    size: int | tuple[int, int]

    def __call__(self, clip, g):
        h, w = _two_sizes(self.size)
        _check_fits(clip, (h, w))
        top = int(torch.randint(clip.shape[-2] - h + 1, (1,), generator=g))
        left = int(torch.randint(clip.shape[-1] - w + 1, (1,), generator=g))
        return crop(clip, top, left, h, w)


@dataclass
class CenterCrop:
    size: int | tuple[int, int]

    def __call__(self, clip, g=None):
        return center_crop(clip, _two_sizes(self.size))


@dataclass
class RandomHorizontalFlip:
    p: float = 0.5

    def __call__(self, clip, g):
        if float(torch.rand((), generator=g)) < self.p:
            return clip.flip(-1)
        return clip


class Compose:
    def __init__(self, *transforms):
        self.transforms = transforms

    def __call__(self, clip, g):
        for t in self.transforms:
            clip = t(clip, g)
        return clip

    def __repr__(self):
        return f"Compose{self.transforms}"


def train_transform(crop_size: int = 112, flip: float = 0.5) -> Compose:
    """The papers' training augmentation: random crop (112 of 136 or 128x171) and horizontal flip."""
    return Compose(RandomCrop(crop_size), RandomHorizontalFlip(flip))


def eval_transform(crop_size: int = 112) -> Compose:
    return Compose(CenterCrop(crop_size))


def to_input(clips: torch.Tensor, modality: str = "rgb") -> torch.Tensor:
    """uint8 clips ``(..., C, T, H, W)`` from a loader -> the network's float input.

    "rgb": normalised frames. "dif": 3DRotNet's frame difference of the normalised frames, so a
    loader asked for T+1 frames gives T differences."""
    x = normalize(clips)
    if modality == "dif":
        return frame_difference(x)
    if modality != "rgb":
        raise ValueError(f"unknown modality {modality!r}; choose rgb or dif")
    return x


def clip_frames(clip_length: int, modality: str = "rgb") -> int:
    """Frames a loader must read for a clip of ``clip_length`` inputs: DIF needs one more (T+1
    frames give T differences)."""
    return clip_length + (1 if modality == "dif" else 0)


def memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A ``(B, C, T, H, W)`` batch in channels_last_3d memory when asked (other shapes unchanged):
    a model converted to channels_last_3d runs fastest on inputs laid out the same way."""
    if channels_last and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
