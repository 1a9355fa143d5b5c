"""`vidssl pretrain`: self-supervised pretraining by rotation prediction, clip order, or both.

Defaults follow the papers (unset fields in the config mean "the paper's value for this task",
vidssl.config.PAPER, resolved and printed at start, and stored in the checkpoint):
- rotation (3DRotNet 4.2): batch 32 clips (x4 rotations), SGD lr 0.1 x0.1 every 24,000 iterations,
  104,000 iterations, random 112 crops of 136x136 frames, flip 0.5, backbone resnet18_3d.
- clip order (VCOP 4): batch 8 tuples, SGD lr 0.001 momentum 0.9 weight decay 5e-4, 300 epochs,
  112 crops of 128x171 frames, 800 training videos held out for validation, backbone r3d_10.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from torch import nn

from . import backbones
from .config import PretrainConfig, check_ranges, resolve_pretrain, to_plain, write_config
from .data.datasets import load_dataset
from .data.sampling import sample_seed, split_videos
from .data.transforms import clip_frames, eval_transform, to_input, train_transform
from .runs import claim
from .runtime import Runtime, launched_main
from .tasks import PretextModel, build_task
from .train import fit, loop_config

log = logging.getLogger("vidssl")

__all__ = ["PretrainConfig", "pretrain", "resolve"]


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the paper defaults (the unset fields) and check the settings; returns a new config."""
    cfg = resolve_pretrain(cfg)
    check_ranges(cfg)
    if cfg.backbone not in backbones.names():
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(backbones.names())}")
    if cfg.frame_size is not None and min(cfg.frame_size) < cfg.crop:
        raise ValueError(f"--crop {cfg.crop} is larger than the frames ({cfg.frame_size[0]}x{cfg.frame_size[1]})")
    return cfg


def task_seed(seed: int, step: int, rank: int = 0, world: int = 1) -> int:
    """The seed of a training step's task draws (rotations, permutations): a pure function of
    (seed, step) and, under DDP, of the rank, so that ranks do not draw the same targets."""
    return sample_seed(seed, step, 1) if world == 1 else sample_seed(seed, step, 1, rank)


def pretrain(cfg: PretrainConfig) -> str:
    """Pretrain and return the path of the best checkpoint (by validation loss)."""
    cfg = resolve(cfg)
    # Before anything is written: a second run never lands in the first one's folder, and a resumed
    # run continues with the settings its checkpoints were made with.
    claim(cfg.out, cfg, command="pretrain", resume=cfg.resume, overwrite=cfg.overwrite, main=launched_main())
    rt = Runtime.setup(cfg)
    torch.manual_seed(cfg.seed)
    workers = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 8)

    backbone = backbones.build(cfg.backbone, cfg.width)
    task = build_task(cfg, backbone.num_features)
    full = load_dataset(
        cfg.kind,
        cfg.dataset,
        split=cfg.split,
        subset="train",
        cache=cfg.cache,
        size=cfg.frame_size,
        resample=cfg.resample,
        on_short=cfg.on_short,
        sampler=task.sampler(clip_frames(cfg.clip_length, cfg.modality)),
        transform=train_transform(cfg.crop, cfg.flip),
        seed=cfg.seed,
        progress=rt.main and cfg.progress,
    )
    if len(full) == 0:
        fix = "a shorter --clip-length or --interval"  # clip tuples never loop (their clips would overlap)
        if cfg.task == "rotation":
            fix = "--on-short loop repeats short ones"
        raise ValueError(
            f"{cfg.dataset}: no usable videos for {cfg.task} ({len(full.skipped)} skipped, e.g. "
            f"{full.skipped[0][1] if full.skipped else 'none found'}); {fix}"
        )
    size = full.size
    if size is not None and min(size) < cfg.crop:
        raise ValueError(f"--crop {cfg.crop} is larger than the frames ({size[0]}x{size[1]})")
    train_idx, val_idx = split_videos(len(full), cfg.val_videos, cfg.data_fraction, cfg.seed, cfg.max_videos)
    train_set = full.select(train_idx)
    val_set = full.select(val_idx, transform=eval_transform(cfg.crop), seed=cfg.seed + 1) if val_idx else None

    rt.announce()  # after the data checks: a run that cannot start ends with its one error line only
    model = rt.prepare(PretextModel(backbone, task), train=True)
    steps_per_epoch = len(train_set) // (cfg.batch_size * rt.world)
    if steps_per_epoch == 0:  # said before anything is written, so the folder stays free for the next try
        raise ValueError(
            f"{len(train_set)} training videos do not fill one batch of {cfg.batch_size} "
            f"on {rt.world} process(es); lower --batch-size"
        )
    total = cfg.iters if cfg.iters is not None else cfg.epochs * max(steps_per_epoch, 1)
    loop = loop_config(
        cfg, batch_size=cfg.batch_size, total_steps=total, workers=workers, seed=cfg.seed, keep_every=cfg.keep_every
    )
    meta = {
        "kind": "pretrain",
        "backbone": cfg.backbone,
        "width": cfg.width,
        "task": cfg.task,
        "config": {**to_plain(cfg), "frame_size": size},
        "bf16": rt.bf16,
        "videos": {"train": len(train_set), "val": len(val_idx), "skipped": len(full.skipped)},
    }
    if rt.main:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(meta, f, indent=1)
        write_config(cfg, cfg.out, "pretrain")
        print(
            f"pretrain {cfg.task} | {cfg.backbone} x{cfg.width} ({backbones.num_params(backbone):,} params) | "
            f"{len(train_set)} train / {len(val_idx)} val videos ({len(full.skipped)} skipped) | frames {size} "
            f"crop {cfg.crop} | batch {cfg.batch_size} x {rt.world} | {total} steps | lr {cfg.lr} | {rt.describe()}"
        )

    def step_fn(m, batch, step, train=True):
        x = rt.input(to_input(batch[0].to(rt.device, non_blocking=True), cfg.modality))
        g = torch.Generator().manual_seed(task_seed(cfg.seed, step, rt.rank, rt.world))
        # Validation targets are fixed per video (and balanced), so that the best checkpoint is
        # chosen on the same question every epoch; training draws new ones every step.
        targets = None if train else task.fixed_targets(batch.index, cfg.seed)
        with rt.autocast():
            return m(x, g, targets)

    summary = fit(model, step_fn, train_set, val_set, loop, cfg.out, meta, rt, resume=cfg.resume)
    if rt.main:
        _report_collapse(cfg, task, summary)
        with open(os.path.join(cfg.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary["best"]


def _report_collapse(cfg: PretrainConfig, task: nn.Module, summary: dict) -> None:
    """A pretext whose validation loss stays at ln K learned nothing: say so (shared/notes)."""
    val = summary.get("val") or {}
    chance_loss = math.log(1 / task.chance) if not getattr(task, "regression", False) else None
    trained = summary["steps"] >= 100  # any pretext starts at chance: judge only after some training
    if trained and chance_loss and val and cfg.task != "joint" and abs(val["loss"] - chance_loss) < 0.02 * chance_loss:
        hint = ""
        if "live_units" in val:
            hint = (
                f" (live pair units {val['live_units']:.0%}); --order-head centered learns where the paper's head dies"
            )
        log.warning(
            "the %s pretext collapsed: validation loss %.3f is chance level ln %d = %.3f%s",
            cfg.task,
            val["loss"],
            round(1 / task.chance),
            chance_loss,
            hint,
        )
    if summary["skipped_steps"]:
        log.warning("%d steps skipped for non-finite gradients", summary["skipped_steps"])
