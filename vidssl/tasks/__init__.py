"""Pretext tasks. A task turns a batch of clips into (inputs, targets) with an explicit generator,
owns its head, its loss and its metrics; datasets know nothing of tasks.

Every task has ``sampler(clip_length)`` (the clip sampling policy it needs from a dataset),
``make_batch(clips, g) -> (inputs, targets)``, ``forward(backbone, inputs)``, ``loss``,
``metrics``, and ``step(backbone, clips, g) -> (loss, metrics)`` which chains them.
"""

from __future__ import annotations

from .clip_order import ClipOrderTask
from .joint import JointTask
from .rotation import ROTATION_SETS, RotationTask

TASKS = ("rotation", "clip_order", "joint")

__all__ = ["ClipOrderTask", "JointTask", "RotationTask", "ROTATION_SETS", "TASKS"]
