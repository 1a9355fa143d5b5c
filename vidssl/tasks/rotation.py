"""3DRotNet's pretext (Jing et al., section 3): rotate every frame of a clip by one angle, predict it.

Multiples of 90 degrees are exact index operations (``torch.rot90``), no interpolation. The 8-way
set (45-degree steps) and the 360-degree regression resample every angle alike (``even_rotation``:
bilinear, the right angles shifted by a sub-pixel, all low-passed by the same circular filter), so
the blur says nothing about the label, and then centre-crop every clip to the largest square that
stays inside the rotated frame, so no empty corner gives the angle away; the paper attributes the
weaker transfer of these variants to the context this crop loses (section 4.6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import RandomClip, balanced_draw, uniform_draw
from ..data.transforms import center_crop

# Table 3's sets, the 8-way set and the 360-degree regression (None).
ROTATION_SETS: dict[str, tuple[int, ...] | None] = {
    "0,90": (0, 90),
    "0,90,180": (0, 90, 180),
    "90,180,270": (90, 180, 270),
    "0,90,180,270": (0, 90, 180, 270),
    "8way": tuple(range(0, 360, 45)),
    "360": None,
}


def rotate(clips: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate every frame of clips ``(..., T, H, W)`` counter-clockwise by ``degrees``.

    Multiples of 90 are exact (``torch.rot90``); other angles sample bilinearly with zero padding."""
    if degrees % 90 == 0:
        return torch.rot90(clips, int(degrees // 90) % 4, dims=(-2, -1))
    return rotate_each(clips.unsqueeze(0), torch.tensor([float(degrees)]))[0]


def rotate_each(clips: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate clip ``b`` of ``(B, C, T, H, W)`` counter-clockwise by ``degrees[b]`` (bilinear),
    sampling ``shift[b]`` pixels off along both axes when given."""
    b, c, t, h, w = clips.shape
    rad = degrees.to(clips.device, torch.float32) * (math.pi / 180)
    cos, sin = torch.cos(rad), torch.sin(rad)
    off = torch.zeros_like(cos) if shift is None else shift.to(cos)
    # affine_grid maps output to input coordinates (x right, y down): a counter-clockwise turn on
    # screen samples the input at R(+theta) of the output position.
    theta = torch.stack(
        [torch.stack([cos, -sin, off * 2 / w], 1), torch.stack([sin, cos, off * 2 / h], 1)], 1
    )  # (B, 2, 3)
    theta = theta.repeat_interleave(t, 0).to(clips.dtype)
    frames = clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    grid = F.affine_grid(theta, (b * t, c, h, w), align_corners=False)
    out = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


# Bilinear resampling blurs a 45-degree turn and leaves the right angles sharp, and its traces run
# along the source's pixel grid, so a resampled rotation shows its angle. Measured on white and
# smoothed noise through the 8-way set (1,000 + 1,000 rotated clips, tests/test_protocols.py): a
# linear classifier on 7 image statistics told right from diagonal angles apart 100% of the time
# (the 8 angles: 22-24%, chance 12.5). Sampling the right angles EVEN_SHIFT pixels off gives them
# the mean bilinear blur of an arbitrary angle (2 f (1 - f) = 1/3, the mean of 2 u (1 - u) over u
# uniform), and one circular low-pass at EVEN_CUTOFF x Nyquist of every cropped output removes the
# grid-oriented traces: with both, 51-53% (chance 50) and 11% over the 8 angles. In a prototype
# the shift alone left 96-100%, and a cut-off of 0.5 up to 62%. The price: 8-way and 360-degree
# inputs keep 0.4 of the frequencies (the paper's 4-way set stays exact).
EVEN_SHIFT = (1 - 1 / math.sqrt(3)) / 2
EVEN_CUTOFF = 0.4


def isotropic_lowpass(x: torch.Tensor, cutoff: float = EVEN_CUTOFF, edge: float = 0.1) -> torch.Tensor:
    """Frames ``(..., H, W)`` low-passed by a circular filter (raised-cosine edge) at ``cutoff``
    times the Nyquist frequency: the same in every direction, so it keeps no trace of the grid."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device).abs().view(-1, 1) * 2
    fx = torch.fft.rfftfreq(w, device=x.device).view(1, -1) * 2
    gain = 0.5 - 0.5 * torch.cos(math.pi * ((cutoff - (fx**2 + fy**2).sqrt()) / edge).clamp(0, 1))
    return torch.fft.irfft2(torch.fft.rfft2(x.float()) * gain, s=(h, w)).to(x.dtype)


def even_rotation(clips: torch.Tensor, degrees: torch.Tensor, side: int) -> torch.Tensor:
    """``rotate_each`` with every angle resampled alike (see EVEN_SHIFT), centre-cropped to
    ``side`` (inside the rotated frame for any angle), then low-passed: sharpness and grid traces
    say nothing about the angle. The filter runs on the crop, so the empty corners of a rotated
    frame never bleed into it."""
    right = (degrees.remainder(90) == 0).float()
    return isotropic_lowpass(center_crop(rotate_each(clips, degrees, shift=right * EVEN_SHIFT), (side, side)))


def safe_crop_size(size: int) -> int:
    """Side of the centred square that stays inside a ``size`` square rotated by any angle
    (size / sqrt 2, less a pixel for the bilinear edge)."""
    return int(size / math.sqrt(2)) - 1


class RotationTask(nn.Module):
    """Rotation prediction. Head as the paper: feature -> FC 64 -> ReLU -> FC K (1 for regression).

    Args:
        feature_dim: the backbone's pooled feature size.
        rotations: a key of ROTATION_SETS.
        mode: "all" puts every rotation of every clip in the batch (the paper: B clips give K*B
            inputs, block k holding rotation k of every clip); "random" draws one rotation per clip.
        loss: "l1" or "l2" for the 360-degree regression (the target is the angle in turns, [0, 1)).
    """

    name = "rotation"

    def __init__(self, feature_dim: int, rotations: str = "0,90,180,270", mode: str = "all", loss: str = "l1"):
        super().__init__()
        if rotations not in ROTATION_SETS:
            raise ValueError(f"unknown rotation set {rotations!r}; choose one of {', '.join(ROTATION_SETS)}")
        if mode not in ("all", "random"):
            raise ValueError(f"rotation mode must be 'all' or 'random', not {mode!r}")
        if loss not in ("l1", "l2"):
            raise ValueError(f"regression loss must be l1 or l2, not {loss!r}")
        self.rotations, self.mode, self.loss_kind = rotations, mode, loss
        self.angles = ROTATION_SETS[rotations]
        self.regression = self.angles is None
        out = 1 if self.regression else len(self.angles)
        self.head = nn.Sequential(nn.Linear(feature_dim, 64), nn.ReLU(inplace=True), nn.Linear(64, out))
        self.exact = not self.regression and all(a % 90 == 0 for a in self.angles)

    @staticmethod
    def sampler(clip_length: int) -> RandomClip:
        return RandomClip(clip_length)

    @property
    def chance(self) -> float:
        return 1 / 8 if self.regression else 1 / len(self.angles)

    def fixed_targets(self, index: torch.Tensor, seed: int) -> torch.Tensor | None:
        """Targets for the videos at ``index`` fixed by (seed, video) and balanced over the classes
        (validation); None in "all" mode, where every clip takes every rotation anyway. Regression:
        one angle per video, stratified over 8 sectors."""
        if self.regression:
            return (balanced_draw(index, 8, seed) + uniform_draw(index, seed)) / 8
        if self.mode == "all":
            return None
        return balanced_draw(index, len(self.angles), seed)

    def make_batch(
        self, clips: torch.Tensor, g: torch.Generator, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float clips ``(B, C, T, H, W)`` -> (rotated inputs, targets).

        Classification targets are indices into the rotation set; regression targets are angles in
        turns. Random draws come from ``g`` (a CPU generator) unless ``targets`` gives them
        ("random" mode and regression; "all" mode has no draw)."""
        b, _, _, h, w = clips.shape
        if h != w and not self.exact:
            raise ValueError(f"rotation by other than 90-degree steps needs square clips, got {h}x{w}")
        if h != w and any(a % 180 for a in (self.angles or ())):
            raise ValueError(f"rotating by 90 degrees needs square clips, got {h}x{w}; crop them square")
        dev = clips.device
        if self.regression:
            turns = torch.rand(b, generator=g) if targets is None else targets.float().cpu()
            return even_rotation(clips, turns * 360, safe_crop_size(h)), turns.to(dev)
        k = len(self.angles)
        if self.mode == "all":
            labels = torch.arange(k).repeat_interleave(b)
            if self.exact:
                x = torch.cat([rotate(clips, a) for a in self.angles])
            else:
                angles = torch.tensor(self.angles).repeat_interleave(b).float()
                x = even_rotation(clips.repeat(k, 1, 1, 1, 1), angles, safe_crop_size(h))
        else:
            labels = torch.randint(k, (b,), generator=g) if targets is None else targets.long().cpu()
            if self.exact:
                x = torch.stack([rotate(clips[i], self.angles[int(labels[i])]) for i in range(b)])
            else:
                x = even_rotation(clips, torch.tensor(self.angles, dtype=torch.float32)[labels], safe_crop_size(h))
        return x, labels.to(dev)

    def forward(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(backbone(inputs))

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.regression:
            err = out.squeeze(1).float() - targets
            return err.abs().mean() if self.loss_kind == "l1" else err.square().mean()
        return F.cross_entropy(out.float(), targets)

    @torch.no_grad()
    def metrics(self, out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Accuracy; for regression, the share within 22.5 degrees (the nearest of 8 steps) and the
        mean circular error in degrees."""
        if self.regression:
            diff = (out.squeeze(1).float() - targets).remainder(1.0)
            err = torch.minimum(diff, 1 - diff) * 360
            return {"acc": (err < 22.5).float().mean().item(), "deg_err": err.mean().item()}
        return {"acc": (out.argmax(1) == targets).float().mean().item()}

    def step(self, backbone: nn.Module, clips: torch.Tensor, g: torch.Generator, targets=None):
        inputs, targets = self.make_batch(clips, g, targets)
        out = self.forward(backbone, inputs)
        return self.loss(out, targets), self.metrics(out, targets)
