"""The random-label control: the same training as a pretext task, but every target is drawn at
random, independent of the clip (the issue of fair baselines: a "pretrained beats random" gap may
come from having trained on the data at all, e.g. batch-norm statistics and weight scales that
fit the videos, not from what the pretext asks). Its features are what training without a
question gives; a pretext whose features are no better than these learned nothing from its task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.sampling import RandomClip, balanced_draw


class RandomLabelTask(nn.Module):
    """Classify clips into ``classes`` labels drawn at random each step (4 by default, as many as
    the rotations); the head is the rotation task's (FC 64 -> ReLU -> FC K). Inputs are the clips
    unchanged, so the backbone sees the videos exactly as a downstream task does."""

    name = "random_labels"

    def __init__(self, feature_dim: int, classes: int = 4):
        super().__init__()
        if classes < 2:
            raise ValueError(f"the random-label control needs at least 2 labels, not {classes}")
        self.classes = classes
        self.head = nn.Sequential(nn.Linear(feature_dim, 64), nn.ReLU(inplace=True), nn.Linear(64, classes))

    @staticmethod
    def sampler(clip_length: int) -> RandomClip:
        return RandomClip(clip_length)

    @property
    def chance(self) -> float:
        return 1 / self.classes

    def fixed_targets(self, index: torch.Tensor, seed: int) -> torch.Tensor:
        """Validation labels, fixed by (seed, video): the loss stays at ln K whatever the network."""
        return balanced_draw(index, self.classes, seed)

    def make_batch(self, clips: torch.Tensor, g: torch.Generator, targets: torch.Tensor | None = None):
        b = clips.shape[0]
        labels = torch.randint(self.classes, (b,), generator=g) if targets is None else targets.long().cpu()
        return clips, labels.to(clips.device)

    def forward(self, backbone: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(backbone(inputs))

    def loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.float(), targets)

    @torch.no_grad()
    def metrics(self, out: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"acc": (out.argmax(1) == targets).float().mean().item()}

    def step(self, backbone: nn.Module, clips: torch.Tensor, g: torch.Generator, targets=None):
        inputs, targets = self.make_batch(clips, g, targets)
        out = self.forward(backbone, inputs)
        return self.loss(out, targets), self.metrics(out, targets)
