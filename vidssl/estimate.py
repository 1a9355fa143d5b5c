"""The training time a full-scale recipe should take here, measured before it starts: seconds per
clip of each stage's network and clip size (a few timed steps) x clips per step x steps."""

from __future__ import annotations

import dataclasses
import time

from . import config as C
from .config import ReproduceConfig
from .report import format_table


def seconds_per_clip(stage_cfg, command: str) -> float:
    """Training time per clip (or tuple) of a stage on this device: 2 timed steps of 2 random clips
    of the stage's size, after one warm-up step."""
    import torch

    from . import backbones
    from .runtime import Runtime
    from .tasks import PretextModel, build_task

    rt = Runtime.setup(stage_cfg)
    name = stage_cfg.backbone or "resnet18_3d"
    width = getattr(stage_cfg, "width", None) or 1.0
    backbone = backbones.build(name, width)
    shape = (2, 3, stage_cfg.clip_length or 16, stage_cfg.crop, stage_cfg.crop)  # inputs (DIF: differences)
    if command == "pretrain":
        model = rt.prepare(PretextModel(backbone, build_task(stage_cfg, backbone.num_features)), train=True)
        if stage_cfg.task in ("clip_order", "joint"):  # tuples of clips
            shape = (2, stage_cfg.num_clips, *shape[1:])
        run = lambda x: model(x, torch.Generator().manual_seed(0))[0]
    else:
        head = torch.nn.Linear(backbone.num_features, 10)
        model = rt.prepare(torch.nn.Sequential(backbone, head), train=True)
        run = lambda x: model(x).logsumexp(1).mean()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(shape, device=rt.device)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with rt.autocast():
            loss = run(rt.input(x))
        loss.float().backward()
        opt.step()
        opt.zero_grad()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / 2 / shape[0]


def expected_time(cfg: ReproduceConfig, recipe: dict, data: dict) -> float:
    """Print, before a full-scale run, the training time each stage should take here: measured
    seconds per clip x clips per step x steps (steps from the video files counted, about)."""
    from .data.datasets import video_root
    from .data.video import list_videos
    from .reproduce import _main, init_stage, runs, stage_config

    counts, measured, total, rows = {}, {}, 0.0, []
    by_name = {s["name"]: s for s in recipe["stages"]}
    for stage in recipe["stages"]:
        if stage["command"] not in ("pretrain", "finetune"):
            continue
        stage_cfg = stage_config(cfg, stage, *runs(cfg, stage)[0], data, _Placeholder())
        if stage["command"] == "pretrain":
            stage_cfg = C.resolve_pretrain(stage_cfg)
        elif init_stage(stage.get("init")) in by_name:  # fine-tuning follows the network it starts from
            source = by_name[init_stage(stage["init"])]  # (also from STAGE/last or STAGE@F)
            pre = C.resolve_pretrain(stage_config(cfg, source, *runs(cfg, source)[0], data, _Placeholder()))
            stage_cfg = dataclasses.replace(stage_cfg, backbone=pre.backbone, width=pre.width,
                                            clip_length=pre.clip_length, modality=pre.modality)  # fmt: skip
        root = stage_cfg.dataset
        counts.setdefault(root, len(list_videos(video_root(root))))
        batch = stage_cfg.batch_size
        steps = stage_cfg.iters or stage_cfg.epochs * max(1, counts[root] // batch)
        key = (stage["command"], stage_cfg.backbone, stage_cfg.width, stage_cfg.clip_length, stage_cfg.crop,
               getattr(stage_cfg, "task", None), getattr(stage_cfg, "rotations", None))  # fmt: skip
        if key not in measured:  # stages of one network and clip size share a measurement
            measured[key] = seconds_per_clip(stage_cfg, stage["command"])
        per_clip = measured[key]
        hours = per_clip * batch * steps * len(runs(cfg, stage)) / 3600
        total += hours
        rows.append({"stage": stage["name"], "steps": f"{steps:,}", "s/step": f"{per_clip * batch:.2f}",
                     "hours": f"{hours:.1f}"})  # fmt: skip
    if rows and _main():
        print(f"expected training time here ({cfg.device}), measured per step, steps from the file counts:")
        print(
            format_table(rows, ["stage", "steps", "s/step", "hours"]) + f"\ntotal about {total:.1f} hours\n", flush=True
        )
    return total


class _Placeholder(dict):
    """Earlier stages' outputs before they exist (for the time estimate: any checkpoint name does)."""

    def __missing__(self, key):
        return {"checkpoint": "scratch", "folder": ""}
