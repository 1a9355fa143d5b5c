"""`vidssl finetune`: action recognition from a pretrained (or random) backbone, and its testing.

Defaults follow 3DRotNet (4.2): 16x112x112 clips cropped from 136x136 frames, SGD lr 0.008 x0.1
every 4,000 iterations, 100 epochs. VCOP (4.2) crops from 128x171 and fine-tunes 150 epochs with
its pretraining optimiser (lr 0.001): ``--frame-size 128x171 --lr 0.001 --lr-decay-every 0
--epochs 150``. Testing is at video level: 10 evenly spaced clips per video, centre crop, softmax
scores averaged; video and clip top-1, per-class accuracy and the confusion matrix are reported.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from . import backbones
from .checkpoint import CheckpointError, load_backbone
from .config import check_ranges
from .data.datasets import load_dataset
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.sampling import RandomClip, UniformClips
from .data.transforms import eval_transform, memory_format, to_input, train_transform
from .pretrain import choose_bf16, pick_device, speed_options
from .train import fit, loop_config

log = logging.getLogger("vidssl")
FREEZE = ("none", "conv2", "conv3", "conv4", "conv5", "all")


@dataclass
class FinetuneConfig:
    dataset: str  # labelled dataset (UCF101/HMDB51/Kinetics layout)
    init: str = "scratch"  # a pretraining checkpoint (backbone loaded strictly), or scratch
    out: str = "runs/finetune"  # output folder: results.json, one folder per seed
    backbone: str | None = None  # for --init scratch (default resnet18_3d); must match a checkpoint's
    width: float | None = None  # for --init scratch (default 1.0)
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # dataset layout
    split: int = 1  # official split
    cache: str | None = None  # frame cache (frame size then comes from it)
    frame_size: tuple[int, int] | None = (136, 136)  # HxW frames are resized to (3DRotNet; VCOP 128x171)
    crop: int = 112  # square crop side
    flip: float = 0.5  # horizontal flip probability in training
    clip_length: int | None = None  # frames per clip; default: the checkpoint's, else 16
    modality: Literal["auto", "rgb", "dif"] = "auto"  # auto: the checkpoint's (rgb for scratch)
    freeze_until: Literal["none", "conv2", "conv3", "conv4", "conv5", "all"] = (
        "none"  # freeze every block before it (3DRotNet Fig. 4a); all: the whole backbone
    )
    shots: int | None = None  # keep k labelled training videos per class (few-shot, 3DRotNet Table 5)
    train_fraction: float = 1.0  # keep a seeded fraction of the training videos of every class
    seeds: str = "0"  # comma-separated seeds; several runs report mean and spread
    batch_size: int = 32  # clips per step
    epochs: int | None = 100  # training epochs
    iters: int | None = None  # total steps (wins over --epochs)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # the papers use SGD
    lr: float = 0.008  # initial learning rate (3DRotNet)
    lr_decay_every: int = 4000  # steps between x0.1 decays (0: never)
    schedule: Literal["step", "cosine"] = "step"  # step decay or cosine to 0
    warmup: int = 0  # steps of linear warm-up
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # weight decay
    test_clips: int = 10  # clips per test video, evenly spaced
    workers: int | None = None  # DataLoader workers; default: the number of cores, at most 8
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train
    bf16: bool | None = None  # bf16 autocast; default: where it is faster (CUDA, CPUs with AMX)
    channels_last: bool = True  # channels_last_3d memory (1.3-1.5x faster training at 16x112x112 on CPU)
    compile: bool = False  # torch.compile the backbone (for GPUs; on CPU no faster in training, needs g++)
    grad_checkpointing: bool = False  # recompute activations in backward: ~30% less memory, ~1.3x the time
    on_nan: Literal["stop", "skip"] = (
        "stop"  # a NaN/inf loss: stop naming the step and last checkpoint, or skip the batch
    )
    ckpt_every: int = 1000  # steps between checkpoints
    resume: bool = False  # continue each seed from OUT/seedN/checkpoints/last
    log_every: int = 10  # steps between log rows
    progress: bool = True  # progress bars
    tensorboard: bool = True  # TensorBoard scalars


class Classifier(nn.Module):
    """A backbone and a new linear layer; blocks before ``freeze_until`` are frozen, BN included."""

    def __init__(self, backbone: nn.Module, num_classes: int, freeze_until: str = "none"):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.num_features, num_classes)
        names = list(backbone.block_names)
        self.frozen = (
            names if freeze_until == "all" else names[: names.index(freeze_until)] if freeze_until != "none" else []
        )
        for name in self.frozen:
            for p in getattr(backbone, name).parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen BatchNorm keeps its statistics
            getattr(self.backbone, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))


def few_shot_indices(labels: list[int], shots: int | None, fraction: float, seed: int) -> list[int]:
    """Seeded training subset: ``shots`` videos per class (or all a class has), then ``fraction`` of each class."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    keep = []
    for y in sorted(by_class):
        idx = by_class[y]
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n = len(order) if shots is None else min(shots, len(order))
        n = max(1, round(n * fraction))
        keep += order[:n]
    return sorted(keep)


def score_report(clip_probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Video and clip top-1, per-class accuracy and confusion matrix from ``(V, K, C)`` clip probabilities."""
    video_probs = clip_probs.mean(1)
    pred = video_probs.argmax(1)
    n = len(classes)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {
        c: (confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else None for i, c in enumerate(classes)
    }
    clip_hits = clip_probs.argmax(2) == labels[:, None]
    return {
        "video_top1": (pred == labels).float().mean().item(),
        "clip_top1": clip_hits.float().mean().item(),
        "videos": len(labels),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset,
    modality: str,
    device,
    bf16: bool,
    batch_size: int = 4,
    workers: int = 0,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, K, C)`` softmax probabilities of every clip of every video, and the labels. A video
    that fails to decode is left out with a warning and removed from ``dataset`` (its records
    match the rows)."""
    model.eval()
    probs, labels, failed, failures = [], [], [], FailureLog()
    for clips, y, _, bad in data_loader(dataset, batch_size, num_workers=workers):
        failures.note(bad)
        failed += bad
        if len(clips) == 0:
            continue
        b, k = clips.shape[:2]
        x = memory_format(to_input(clips.flatten(0, 1).to(device), modality), channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        probs.append(F.softmax(logits.float(), 1).view(b, k, -1).cpu())
        labels.append(y)
    dataset.forget(failed)
    if not probs:
        raise ValueError(f"{getattr(dataset, 'root', 'dataset')}: no test video could be decoded")
    return torch.cat(probs), torch.cat(labels)


def _init_backbone(cfg: FinetuneConfig) -> tuple[nn.Module, dict]:
    """The backbone to fine-tune and where it came from (name, width, pretext, its modality and clip length)."""
    if cfg.init == "scratch":
        name, width = cfg.backbone or "resnet18_3d", cfg.width or 1.0
        source = {"init": "scratch", "backbone": name, "width": width, "modality": "rgb", "clip_length": 16}
        return backbones.build(name, width), source
    backbone, meta = load_backbone(cfg.init)
    for key, want in (("backbone", cfg.backbone), ("width", cfg.width)):
        if want is not None and want != meta[key]:
            raise CheckpointError(f"{cfg.init}: checkpoint of {key} {meta[key]!r}, not {want!r}; drop --{key}")
    pre = meta.get("config", {})
    source = {
        "init": os.path.abspath(cfg.init),
        "backbone": meta["backbone"],
        "width": meta["width"],
        "pretext": meta.get("task"),
        "step": meta.get("step"),
        "modality": pre.get("modality", "rgb"),
        "clip_length": pre.get("clip_length", 16),
    }
    return backbone, source


def finetune_seed(cfg: FinetuneConfig, seed: int) -> dict:
    """One fine-tuning run and its test; returns its results (also written to OUT/seed{seed}/)."""
    out = os.path.join(cfg.out, f"seed{seed}")
    torch.manual_seed(seed)
    device = pick_device(cfg.device)
    backbone, source = _init_backbone(cfg)
    modality = source["modality"] if cfg.modality == "auto" else cfg.modality
    length = cfg.clip_length or source["clip_length"]
    frames = length + (1 if modality == "dif" else 0)
    workers = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 8)
    common = dict(split=cfg.split, cache=cfg.cache, size=None if cfg.cache else cfg.frame_size, progress=cfg.progress)
    train_all = load_dataset(
        cfg.kind,
        cfg.dataset,
        subset="train",
        sampler=RandomClip(frames),
        transform=train_transform(cfg.crop, cfg.flip),
        seed=seed,
        on_short="loop",
        **common,
    )
    if not train_all.classes:
        raise ValueError(f"{cfg.dataset}: fine-tuning needs labels (a UCF101, HMDB51 or Kinetics layout)")
    keep = few_shot_indices(train_all.labels, cfg.shots, cfg.train_fraction, seed)
    train_set = train_all.select(keep)
    test_set = load_dataset(
        cfg.kind,
        cfg.dataset,
        subset="test" if cfg.kind != "kinetics" else "val",
        sampler=UniformClips(cfg.test_clips, frames),
        transform=eval_transform(cfg.crop),
        on_short="loop",
        **common,
    )
    use_bf16 = choose_bf16(cfg.bf16, device)  # after the data checks, as in pretrain
    model = Classifier(backbone, len(train_all.classes), cfg.freeze_until).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    speed_options(model.backbone, cfg.compile, cfg.grad_checkpointing, device)
    batch = min(cfg.batch_size, len(train_set))
    steps_per_epoch = len(train_set) // batch
    total = cfg.iters if cfg.iters is not None else cfg.epochs * steps_per_epoch
    loop = loop_config(cfg, batch_size=batch, total_steps=total, workers=workers, seed=seed)
    meta = {
        "kind": "finetune",
        "backbone": source["backbone"],
        "width": source["width"],
        "task": f"finetune {len(train_all.classes)} classes",
        "modality": modality,
        "clip_length": length,
        "classes": train_all.classes,
        "source": source,
        "config": asdict(cfg),
        "seed": seed,
    }
    print(
        f"finetune seed {seed} | {meta['backbone']} from {source['init']} | {len(train_set)} of "
        f"{len(train_all)} training videos ({len(train_all.classes)} classes) | {len(test_set)} test videos | "
        f"frozen: {', '.join(model.frozen) or 'none'} | {total} steps"
    )

    def step_fn(m, batch_, step, train=True):
        x = memory_format(to_input(batch_[0].to(device, non_blocking=True), modality), cfg.channels_last)
        y = batch_[1].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = m(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}

    fit(model, step_fn, train_set, None, loop, out, meta, device, resume=cfg.resume)
    probs, labels = predict(
        model, test_set, modality, device, use_bf16, workers=workers, channels_last=cfg.channels_last
    )
    report = score_report(probs, labels, train_all.classes)
    save_file(
        {"clip_probs": probs.contiguous(), "labels": labels.contiguous()},
        os.path.join(out, "scores.safetensors"),
        metadata={"videos": json.dumps([r.rel for r in test_set.records]), "classes": json.dumps(train_all.classes)},
    )
    result = {
        "seed": seed,
        "train_videos": len(train_set),
        "train_names": [r.rel for r in train_set.records],
        **report,
        "skipped": {"train": len(train_all.skipped), "test": len(test_set.skipped)},  # unreadable or bad entries
        "source": source,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, not {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    return seeds


def finetune(cfg: FinetuneConfig) -> dict:
    """Fine-tune once per seed; returns (and writes to OUT/results.json) every run and their mean and spread."""
    check_ranges(cfg)
    if cfg.freeze_until not in FREEZE:
        raise ValueError(f"--freeze-until must be one of {', '.join(FREEZE)}")
    if cfg.shots is not None and cfg.shots < 1:
        raise ValueError(f"--shots must be positive, not {cfg.shots}")
    if not 0 < cfg.train_fraction <= 1:
        raise ValueError(f"--train-fraction must be in (0, 1], not {cfg.train_fraction}")
    runs = [finetune_seed(cfg, s) for s in parse_seeds(cfg.seeds)]
    summary = {}
    for key in ("video_top1", "clip_top1"):
        values = [r[key] for r in runs]
        summary[key] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}
    results = {"config": asdict(cfg), "runs": runs, "summary": summary}
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results
