"""Rotation and clip order on one backbone at once: a weighted sum of the two losses.

The loader yields clip-order tuples; rotation uses the first clip of each tuple (so both tasks see
the same videos in a step)."""

from __future__ import annotations

from torch import nn

from .clip_order import ClipOrderTask
from .rotation import RotationTask


class JointTask(nn.Module):
    name = "joint"

    def __init__(
        self, rotation: RotationTask, clip_order: ClipOrderTask, rotation_weight: float = 1.0, order_weight: float = 1.0
    ):
        super().__init__()
        self.rotation, self.clip_order = rotation, clip_order
        self.weights = (rotation_weight, order_weight)

    def sampler(self, clip_length: int):
        return self.clip_order.sampler(clip_length)

    @property
    def chance(self) -> float:
        return self.rotation.chance

    def fixed_targets(self, index, seed: int):
        """(rotation targets, clip-order targets) for validation, each fixed and balanced."""
        return self.rotation.fixed_targets(index, seed), self.clip_order.fixed_targets(index, seed + 1)

    def step(self, backbone: nn.Module, clips, g, targets=None):
        rot_t, ord_t = targets if targets is not None else (None, None)
        rot_loss, rot_m = self.rotation.step(backbone, clips[:, 0], g, rot_t)
        ord_loss, ord_m = self.clip_order.step(backbone, clips, g, ord_t)
        loss = self.weights[0] * rot_loss + self.weights[1] * ord_loss
        metrics = {
            "acc": rot_m["acc"],
            "rotation_acc": rot_m["acc"],
            "order_acc": ord_m["acc"],
            "rotation_loss": rot_loss.item(),
            "order_loss": ord_loss.item(),
            "live_units": ord_m["live_units"],
        }
        return loss, metrics
