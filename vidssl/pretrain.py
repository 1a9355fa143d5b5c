"""`vidssl pretrain`: self-supervised pretraining by rotation prediction, clip order, or both.

Defaults follow the papers (None in the config means "the paper's value for this task", resolved
and printed at start, and stored in the checkpoint):
- rotation (3DRotNet 4.2): batch 32 clips (x4 rotations), SGD lr 0.1 x0.1 every 24,000 iterations,
  104,000 iterations, random 112 crops of 136x136 frames, flip 0.5, backbone resnet18_3d.
- clip order (VCOP 4): batch 8 tuples, SGD lr 0.001 momentum 0.9 weight decay 5e-4, 300 epochs,
  112 crops of 128x171 frames, 800 training videos held out for validation, backbone r3d_10.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from . import backbones
from .checkpoint import read_meta
from .config import check_ranges
from .data.datasets import load_dataset
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.sampling import sample_seed
from .data.transforms import eval_transform, memory_format, to_input, train_transform
from .tasks import ClipOrderTask, JointTask, RotationTask
from .train import distributed, fit, loop_config

log = logging.getLogger("vidssl")

PAPER = {  # per-task defaults from the papers
    "rotation": {
        "backbone": "resnet18_3d",
        "frame_size": (136, 136),
        "batch_size": 32,
        "lr": 0.1,
        "lr_decay_every": 24_000,
        "iters": 104_000,
        "epochs": None,
    },
    "clip_order": {
        "backbone": "r3d_10",
        "frame_size": (128, 171),
        "batch_size": 8,
        "lr": 0.001,
        "lr_decay_every": 0,
        "iters": None,
        "epochs": 300,
    },
}
PAPER["joint"] = {**PAPER["clip_order"], "backbone": "resnet18_3d"}


@dataclass
class PretrainConfig:
    dataset: str  # dataset folder (UCF101/HMDB51/Kinetics layout or any folder of videos)
    out: str = "runs/pretrain"  # output folder: checkpoints/, log.csv, tb/, config.json
    task: Literal["rotation", "clip_order", "joint"] = "rotation"  # pretext task
    rotations: Literal["0,90", "0,90,180", "90,180,270", "0,90,180,270", "8way", "360"] = (
        "0,90,180,270"  # rotation set (3DRotNet Table 3; 8way: 45-degree steps; 360: regression)
    )
    rotation_mode: Literal["all", "random"] = (
        "all"  # all: every rotation of every clip in the batch (paper); random: one per clip
    )
    regression_loss: Literal["l1", "l2"] = "l1"  # loss of the 360-degree regression
    num_clips: int = 3  # clips per clip-order tuple (2..5)
    interval: int = 8  # frames between the clips of a tuple
    order_head: Literal["paper", "centered"] = (
        "paper"  # paper: VCOP's pairwise head; centered: tuple mean removed first
    )
    rotation_weight: float = 1.0  # joint task: weight of the rotation loss
    order_weight: float = 1.0  # joint task: weight of the clip-order loss
    modality: Literal["rgb", "dif"] = "rgb"  # input: RGB frames or frame differences (DIF)
    clip_length: int = 16  # frames per clip (16, 32, 64)
    backbone: str | None = None  # default: resnet18_3d (rotation, joint), r3d_10 (clip order)
    width: float = 1.0  # backbone channel width multiplier (0.25 for CPU runs)
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # dataset layout
    split: int = 1  # official split whose training set is used (UCF101/HMDB51)
    cache: str | None = None  # frame cache from `vidssl preprocess` (frame size then comes from it)
    frame_size: tuple[int, int] | None = None  # HxW frames are resized to; default 136x136 rotation, 128x171 clip order
    crop: int = 112  # square crop side fed to the network
    flip: float = 0.5  # horizontal flip probability
    on_short: Literal["skip", "loop"] = "skip"  # videos too short for the clips: skip or loop them
    batch_size: int | None = None  # clips (rotation) or tuples per step; default 32 rotation, 8 clip order
    iters: int | None = None  # total steps (wins over --epochs); default 104,000 for rotation
    epochs: int | None = None  # total epochs; default 300 for clip order
    lr: float | None = None  # initial learning rate; default 0.1 rotation, 0.001 clip order
    optimizer: Literal["sgd", "adamw"] = "sgd"  # the papers use SGD
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # weight decay
    schedule: Literal["step", "cosine"] = "step"  # step: x0.1 every --lr-decay-every steps (papers); cosine to 0
    lr_decay_every: int | None = None  # steps between x0.1 decays (0: never); default 24,000 rotation, 0 clip order
    warmup: int = 0  # steps of linear learning-rate warm-up
    val_videos: int = 800  # training videos held out for validation (VCOP), at most 10% of the dataset
    data_fraction: float = 1.0  # pretrain on a seeded fraction of the videos (3DRotNet Table 4)
    workers: int | None = None  # DataLoader workers; default: the number of cores, at most 8
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train
    bf16: bool | None = None  # bf16 autocast; default: where it is faster (CUDA, CPUs with AMX)
    channels_last: bool = True  # channels_last_3d memory (1.3-1.5x faster training at 16x112x112 on CPU)
    compile: bool = False  # torch.compile the backbone (for GPUs; on CPU no faster in training, needs g++)
    grad_checkpointing: bool = False  # recompute activations in backward: ~30% less memory, ~1.3x the time
    on_nan: Literal["stop", "skip"] = (
        "stop"  # a NaN/inf loss: stop naming the step and last checkpoint, or skip the batch
    )
    ckpt_every: int = 1000  # steps between checkpoints of the last state
    keep_every: int = 0  # also keep checkpoints/stepNNNNNNN every N steps, for `vidssl eval-pretext` series (0: never)
    log_every: int = 10  # steps between log rows
    seed: int = 0  # the same seed gives the same run on CPU
    resume: bool = False  # continue from OUT/checkpoints/last
    progress: bool = True  # progress bar
    tensorboard: bool = True  # TensorBoard scalars in OUT/tb (a CSV is always written)


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Fill the paper defaults (the Nones) and check the settings; returns a new config."""
    paper = PAPER[cfg.task]
    fill = {k: paper[k] for k in ("backbone", "batch_size", "lr", "lr_decay_every") if getattr(cfg, k) is None}
    if cfg.frame_size is None and cfg.cache is None:
        fill["frame_size"] = paper["frame_size"]
    if cfg.iters is None and cfg.epochs is None:
        fill["iters"], fill["epochs"] = paper["iters"], paper["epochs"]
    cfg = dataclasses.replace(cfg, **fill)
    check_ranges(cfg)
    if cfg.backbone not in backbones.names():
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {', '.join(backbones.names())}")
    checks = [
        (cfg.clip_length >= 1, f"--clip-length must be positive, not {cfg.clip_length}"),
        (cfg.crop >= 8, f"--crop must be at least 8, not {cfg.crop}"),
        (cfg.batch_size >= 1, f"--batch-size must be positive, not {cfg.batch_size}"),
        (cfg.iters is None or cfg.iters >= 1, f"--iters must be positive, not {cfg.iters}"),
        (cfg.epochs is None or cfg.epochs >= 1, f"--epochs must be positive, not {cfg.epochs}"),
        (cfg.lr > 0, f"--lr must be positive, not {cfg.lr}"),
        (0 < cfg.data_fraction <= 1, f"--data-fraction must be in (0, 1], not {cfg.data_fraction}"),
        (cfg.val_videos >= 0, f"--val-videos must be >= 0, not {cfg.val_videos}"),
        (cfg.width > 0, f"--width must be positive, not {cfg.width}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    if cfg.frame_size is not None and min(cfg.frame_size) < cfg.crop:
        raise ValueError(f"--crop {cfg.crop} is larger than the frames ({cfg.frame_size[0]}x{cfg.frame_size[1]})")
    return cfg


def build_task(cfg: PretrainConfig, feature_dim: int) -> nn.Module:
    rotation = lambda: RotationTask(feature_dim, cfg.rotations, cfg.rotation_mode, cfg.regression_loss)
    order = lambda: ClipOrderTask(feature_dim, cfg.num_clips, cfg.interval, head=cfg.order_head)
    if cfg.task == "rotation":
        return rotation()
    if cfg.task == "clip_order":
        return order()
    if cfg.task == "joint":
        return JointTask(rotation(), order(), cfg.rotation_weight, cfg.order_weight)
    raise ValueError(f"unknown task {cfg.task!r}; choose rotation, clip_order or joint")


class PretextModel(nn.Module):
    """The backbone and the task's head as one module (what DDP wraps and checkpoints hold)."""

    def __init__(self, backbone: nn.Module, task: nn.Module):
        super().__init__()
        self.backbone, self.task = backbone, task

    def forward(self, x: torch.Tensor, g: torch.Generator):
        return self.task.step(self.backbone, x, g)


def pick_device(name: str, rank_local: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA GPU (is a CUDA build of torch installed?)")
        return torch.device("cuda", rank_local)
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (it may still be slower than fp32: see bf16_fast)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f() for f in check if f is not None)


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast beats fp32 here: CUDA GPUs with bf16, and CPUs with AMX tiles.

    Measured on a 2-core CPU with AVX-512 bf16 but no AMX (bench/train_step.py): a 4096^3 matmul
    ran at 160 GFLOP/s in bf16 against 287 in fp32, and training steps were slower in bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


_said: set[str] = set()


def choose_bf16(wanted: bool | None, device: torch.device, say: bool = True) -> bool:
    """``--bf16`` unset: bf16 where it is faster (bf16_fast); on: wherever it runs; off: never.
    With ``say``, the choice is logged once per process when it differs from what was asked."""
    if wanted is None:
        use = bf16_fast(device)
        lacks = "no bf16 support on this GPU" if device.type == "cuda" else "this CPU has no AMX"
        why = "" if use else f"fp32 on {device}: bf16 is not faster here ({lacks}); --bf16 forces it"
    else:
        use = wanted and bf16_supported(device)
        why = f"bf16 not supported on {device}: fp32" if wanted and not use else ""
    if say and why and why not in _said:
        _said.add(why)
        log.warning(why)
    return use


def speed_options(backbone: nn.Module, compile: bool, grad_checkpointing: bool, device: torch.device) -> None:
    """Apply ``--grad-checkpointing`` and ``--compile`` to a backbone, in place (its state_dict
    keys stay the same, so checkpoints load with or without them)."""
    backbones.set_grad_checkpointing(backbone, grad_checkpointing)
    if not compile:
        return
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ValueError(
            "--compile on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile"
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("--compile on CUDA needs triton (pip install triton); or drop --compile")
    backbone.compile()


def split_videos(n: int, val: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, validation) video indices: ``val`` held out (at most 10%), then a fraction kept."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    val = min(val, n // 10)
    held, rest = sorted(order[:val]), order[val:]
    keep = max(1, round(len(rest) * fraction))
    return sorted(rest[:keep]), held


def pretrain(cfg: PretrainConfig) -> str:
    """Pretrain and return the path of the best checkpoint (by validation loss)."""
    cfg = resolve(cfg)
    rank, world = distributed()
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
    torch.manual_seed(cfg.seed)
    channels_last = cfg.channels_last
    workers = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 8)

    backbone = backbones.build(cfg.backbone, cfg.width)
    task = build_task(cfg, backbone.num_features)
    frames = cfg.clip_length + (1 if cfg.modality == "dif" else 0)  # DIF: T+1 frames give T differences
    common = dict(
        split=cfg.split,
        subset="train",
        cache=cfg.cache,
        size=cfg.frame_size,
        on_short=cfg.on_short,
        sampler=task.sampler(frames),
        progress=rank == 0 and cfg.progress,
    )
    full = load_dataset(cfg.kind, cfg.dataset, transform=train_transform(cfg.crop, cfg.flip), seed=cfg.seed, **common)
    if len(full) == 0:
        raise ValueError(
            f"{cfg.dataset}: no usable videos for {cfg.task} ({len(full.skipped)} skipped, e.g. "
            f"{full.skipped[0][1] if full.skipped else 'none found'}); --on-short loop repeats short ones"
        )
    size = full.size
    if size is not None and min(size) < cfg.crop:
        raise ValueError(f"--crop {cfg.crop} is larger than the frames ({size[0]}x{size[1]})")
    train_idx, val_idx = split_videos(len(full), cfg.val_videos, cfg.data_fraction, cfg.seed)
    train_set = full.select(train_idx)
    val_set = full.select(val_idx, transform=eval_transform(cfg.crop), seed=cfg.seed + 1) if val_idx else None

    # Said after the data checks: a run that cannot start ends with its one error line only.
    use_bf16 = choose_bf16(cfg.bf16, device, say=rank == 0)  # one line per run, not per DDP rank
    model = PretextModel(backbone, task).to(device)
    if world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    speed_options(model.backbone, cfg.compile, cfg.grad_checkpointing, device)
    steps_per_epoch = len(train_set) // (cfg.batch_size * world)
    total = cfg.iters if cfg.iters is not None else cfg.epochs * max(steps_per_epoch, 1)
    loop = loop_config(cfg, batch_size=cfg.batch_size, total_steps=total, workers=workers)
    meta = {
        "kind": "pretrain",
        "backbone": cfg.backbone,
        "width": cfg.width,
        "task": cfg.task,
        "config": {**asdict(cfg), "frame_size": size},
        "bf16": use_bf16,
        "videos": {"train": len(train_set), "val": len(val_idx), "skipped": len(full.skipped)},
    }
    if rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(meta, f, indent=1)
        print(
            f"pretrain {cfg.task} | {cfg.backbone} x{cfg.width} ({backbones.num_params(backbone):,} params) | "
            f"{len(train_set)} train / {len(val_idx)} val videos ({len(full.skipped)} skipped) | frames {size} "
            f"crop {cfg.crop} | batch {cfg.batch_size} x {world} | {total} steps | lr {cfg.lr} | "
            f"{device}{' bf16' if use_bf16 else ''}{' channels_last' if channels_last else ''}"
        )

    def step_fn(m, batch, step, train=True):
        clips = batch[0].to(device, non_blocking=True)
        x = memory_format(to_input(clips, cfg.modality), channels_last)
        # The task's random draws (rotations, permutations) are a pure function of (seed, step).
        g = torch.Generator().manual_seed(sample_seed(cfg.seed, step, 1 if train else 2))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return m(x, g)

    summary = fit(model, step_fn, train_set, val_set, loop, cfg.out, meta, device, resume=cfg.resume)
    if rank == 0:
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


def load_pretext_model(path: str, device: str | torch.device = "cpu") -> tuple[PretextModel, PretrainConfig]:
    """Rebuild backbone and pretext head from a pretraining checkpoint alone (weights loaded strictly)."""
    from .checkpoint import CheckpointError, load_weights

    meta, weights = load_weights(path)
    if meta.get("kind") != "pretrain":
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, not a pretraining one")
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in meta["config"].items() if k in known}
    if values.get("frame_size") is not None:
        values["frame_size"] = tuple(values["frame_size"])
    cfg = PretrainConfig(**values)
    backbone = backbones.build(meta["backbone"], meta["width"])
    model = PretextModel(backbone, build_task(cfg, backbone.num_features))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model it names ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), cfg


@torch.no_grad()
def pretext_accuracy(model: PretextModel, cfg: PretrainConfig, dataset, draws: int = 1, seed: int = 0) -> dict:
    """Pretext loss and accuracy of a model on a dataset (each video ``draws`` times), in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    totals, n, failures = {}, 0, FailureLog()
    for d in range(draws):
        dataset.set_epoch(d)
        for i, (clips, _, _, bad) in enumerate(data_loader(dataset, 8)):
            failures.note(bad)
            if len(clips) == 0:
                continue
            x = to_input(clips.to(device), cfg.modality)
            g = torch.Generator().manual_seed(sample_seed(seed, d, i))
            loss, metrics = model(x, g)
            for k, v in {"loss": loss.item(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + v * len(clips)
            n += len(clips)
    return {k: v / max(n, 1) for k, v in totals.items()}


@dataclass
class EvalPretextConfig:
    checkpoints: str  # pretraining checkpoints, comma-separated, or a checkpoints/ folder (every one, by step)
    dataset: str  # dataset to measure the pretext on (e.g. UCF101 after pretraining on Kinetics)
    out: str = "runs/eval-pretext"  # output folder: pretext.csv, pretext.json
    kind: Literal["auto", "ucf101", "hmdb51", "kinetics", "folder"] = "auto"  # dataset layout
    split: int = 1  # official split
    subset: Literal["train", "test"] = "test"  # which videos
    cache: str | None = None  # frame cache (else frames are resized as in pretraining)
    draws: int = 1  # random draws (rotations, orders, clips) per video
    downstream: str | None = None  # comma-separated fine-tuning results.json, one per checkpoint (3DRotNet Fig. 4b)


def _checkpoint_list(spec: str) -> list[str]:
    """Paths named in ``spec``; for a folder, its step-numbered checkpoints (else all), ordered by step."""
    if not os.path.isdir(spec):
        return [p.strip() for p in spec.split(",") if p.strip()]
    names = [f for f in os.listdir(spec) if f.endswith(".json")]
    names = [f for f in names if f.startswith("step")] or names
    if not names:
        raise FileNotFoundError(f"{spec}: no checkpoints (*.json) in this folder")
    paths = [os.path.join(spec, n) for n in names]
    return sorted(paths, key=lambda p: (read_meta(p).get("step", 0), p))


def eval_pretext(cfg: EvalPretextConfig) -> list[dict]:
    """Pretext loss and accuracy of each checkpoint on a dataset, beside downstream accuracy if given."""
    import csv

    from .data.datasets import load_dataset

    paths = _checkpoint_list(cfg.checkpoints)
    downstream = [p.strip() for p in cfg.downstream.split(",")] if cfg.downstream else []
    if downstream and len(downstream) != len(paths):
        raise ValueError(f"--downstream names {len(downstream)} results for {len(paths)} checkpoints")
    rows = []
    for i, path in enumerate(paths):
        model, pcfg = load_pretext_model(path)
        frames = pcfg.clip_length + (1 if pcfg.modality == "dif" else 0)
        meta = read_meta(path)
        ds = load_dataset(
            cfg.kind,
            cfg.dataset,
            split=cfg.split,
            subset=cfg.subset,
            cache=cfg.cache,
            size=None if cfg.cache else meta["config"].get("frame_size"),
            sampler=model.task.sampler(frames),
            transform=eval_transform(pcfg.crop),
            on_short="loop",
        )
        m = pretext_accuracy(model, pcfg, ds, draws=cfg.draws)
        row = {
            "checkpoint": path,
            "step": meta.get("step"),
            "task": pcfg.task,
            "videos": len(ds),
            "pretext_loss": m["loss"],
            "pretext_acc": m["acc"],
        }
        if downstream:
            with open(downstream[i]) as f:
                res = json.load(f)
            row["downstream_top1"] = res["summary"]["video_top1"]["mean"] if "summary" in res else res["video_top1"]
        rows.append(row)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "pretext.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(cfg.out, "pretext.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return rows
