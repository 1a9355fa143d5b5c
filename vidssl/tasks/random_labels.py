"""The random-label control: the same training as a pretext task, but every target is drawn at
random, independent of the clip (the issue of fair baselines: a "pretrained beats random" gap may
come from having trained on the data at all, e.g. batch-norm statistics and weight scales that
fit the videos, not from what the pretext asks). Its features are what training without a
question gives; a pretext whose features are no better than these learned nothing from its task.
"""

from __future__ import annotations

import torch

from .rotation import RotationTask


class RandomLabelTask(RotationTask):
    """The rotation task (its head, loss, metrics and balanced validation targets) with the clips
    left as they are and the labels drawn from the step's generator: as many labels as the rotation
    set has angles. Inputs unchanged, so the backbone sees the videos as a downstream task does."""

    name = "random_labels"

    def __init__(self, feature_dim: int, rotations: str = "0,90,180,270"):
        super().__init__(feature_dim, rotations, mode="random")
        if self.regression:
            raise ValueError("the random-label control needs a rotation set with classes, not the 360 regression")

    def make_batch(self, clips: torch.Tensor, g: torch.Generator, targets: torch.Tensor | None = None):
        b = clips.shape[0]
        labels = torch.randint(len(self.angles), (b,), generator=g) if targets is None else targets.long().cpu()
        return clips, labels.to(clips.device)
