"""Pretext tasks. A task turns a batch of clips into (inputs, targets) with an explicit generator,
owns its head, its loss and its metrics; datasets know nothing of tasks.

Every task has ``sampler(clip_length)`` (the clip sampling policy it needs from a dataset),
``make_batch(clips, g) -> (inputs, targets)``, ``forward(backbone, inputs)``, ``loss``,
``metrics``, and ``step(backbone, clips, g) -> (loss, metrics)`` which chains them.
``build_task`` makes one from the task's own options (vidssl.config.TaskOptions' fields).
"""

from __future__ import annotations

import torch
from torch import nn

from .clip_order import ClipOrderTask
from .joint import JointTask
from .random_labels import RandomLabelTask
from .rotation import ROTATION_SETS, RotationTask

TASKS = ("rotation", "clip_order", "joint", "random_labels")


def build_task(opts, feature_dim: int) -> nn.Module:
    """The pretext task named by ``opts.task``, with its head sized for ``feature_dim`` features.
    ``opts``: anything with TaskOptions' fields (a TaskOptions, a PretrainConfig)."""
    rotation = lambda: RotationTask(feature_dim, opts.rotations, opts.rotation_mode, opts.regression_loss)
    order = lambda: ClipOrderTask(feature_dim, opts.num_clips, opts.interval, head=opts.order_head)
    if opts.task == "rotation":
        return rotation()
    if opts.task == "clip_order":
        return order()
    if opts.task == "joint":
        return JointTask(rotation(), order(), opts.rotation_weight, opts.order_weight)
    if opts.task == "random_labels":  # the control: as many labels as the rotation set has angles (360: 8)
        return RandomLabelTask(feature_dim, opts.rotations if ROTATION_SETS[opts.rotations] else "8way")
    raise ValueError(f"unknown task {opts.task!r}; choose one of {', '.join(TASKS)}")


class PretextModel(nn.Module):
    """The backbone and the task's head as one module (what DDP wraps and checkpoints hold)."""

    def __init__(self, backbone: nn.Module, task: nn.Module):
        super().__init__()
        self.backbone, self.task = backbone, task

    def forward(self, x: torch.Tensor, g: torch.Generator, targets=None):
        return self.task.step(self.backbone, x, g, targets)


__all__ = [
    "ClipOrderTask",
    "JointTask",
    "PretextModel",
    "RandomLabelTask",
    "RotationTask",
    "ROTATION_SETS",
    "TASKS",
    "build_task",
]
