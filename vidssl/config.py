"""The typed config of every command, composed from shared option blocks.

One dataclass per command; its fields are the command's options, each with its default and a
``# comment`` that ``--help`` shows (tyro, the CLI library, reads the comments; see vidssl.cli).
What several commands share is declared once, in a block the command configs inherit:
``RuntimeOptions`` (where and how a network runs), ``TrainRuntimeOptions`` (+ compile, activation
checkpointing), ``LoopOptions`` (the training loop), ``DataOptions`` (which dataset and how its
frames are prepared), ``TaskOptions`` (the pretext task's own arguments) and ``EncoderOptions``
(which network features come from). Blocks are keyword-only, so a command's own required fields
stay positional in Python: ``PretrainConfig("data/synth", task="rotation", iters=1000)``.

Each choice list is one ``Literal`` alias; each numeric range is part of the field's type
(``Positive[int]``, ``Probability``, ...) and checked by ``check_ranges`` before anything runs.
This module imports neither torch nor any video library, so that ``vidssl --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal

from tyro.conf import Positional, arg

from .fields import (  # noqa: F401  (check_ranges, to_plain, ... are used through this module too)
    Block,
    Dataset,
    Device,
    FeatureKind,
    Fraction,
    Kind,
    Modality,
    NonNegative,
    OnNan,
    Optimizer,
    Positive,
    Probability,
    Range,
    RotationSet,
    Schedule,
    Size,
    Split,
    Subset,
    TaskName,
    TriState,
    Width,
    check_ranges,
    dump_config,
    from_plain,
    gained_since,
    plain_defaults,
    preset,
    presets,
    to_plain,
    write_config,
)

# ---------------------------------------------------------------------------------------------
# Shared option blocks


@dataclass(kw_only=True)
class RuntimeOptions:
    device: Device = "auto"  # where the network runs: auto is CUDA when torch sees a GPU, else CPU
    bf16: TriState = None  # bf16 autocast; unset: where it is faster (CUDA, CPUs with AMX); --no-bf16: never
    channels_last: bool = True  # channels_last_3d memory (1.3-1.5x faster at 16x112x112 on CPU)


@dataclass(kw_only=True)
class TrainRuntimeOptions(RuntimeOptions):
    compile: bool = False  # torch.compile the backbone (for GPUs; on CPU no faster in training, needs g++)
    grad_checkpointing: bool = False  # recompute activations in backward: ~30% less memory, ~1.3x the time


@dataclass(kw_only=True)
class LoopOptions:
    batch_size: Positive[int] | None = None  # clips (rotation, fine-tuning) or tuples (clip order) per step
    iters: Positive[int] | None = None  # total steps (wins over --epochs)
    epochs: Positive[int] | None = None  # total epochs
    optimizer: Optimizer = "sgd"  # the papers use SGD
    lr: Positive[float] | None = None  # initial learning rate
    momentum: NonNegative[float] = 0.9  # SGD momentum
    weight_decay: NonNegative[float] = 5e-4  # weight decay
    schedule: Schedule = "step"  # step: x0.1 every --lr-decay-every steps (papers); cosine: to 0 at the end
    lr_decay_every: NonNegative[int] | None = None  # steps between x0.1 decays (0: never)
    lr_milestones: tuple[int, ...] = ()  # steps at which the rate is multiplied by 0.1 (schedule step; replaces --lr-decay-every). torchvision's scripts count epochs here, vidssl steps
    warmup: NonNegative[int] = 0  # steps of linear learning-rate warm-up
    workers: NonNegative[int] | None = None  # DataLoader workers; unset: the number of cores, at most 8
    on_nan: OnNan = "stop"  # a NaN/inf loss: stop naming the step and last checkpoint, or skip the batch
    ckpt_every: Positive[int] = 1000  # steps between checkpoints of the last state
    log_every: Positive[int] = 10  # steps between log rows
    resume: bool = False  # continue from the last checkpoint (OUT/checkpoints/last; finetune: OUT/seedN/...)
    progress: bool = True  # progress bars
    tensorboard: bool = True  # TensorBoard scalars in OUT/tb (a CSV is always written)


@dataclass(kw_only=True)
class DataOptions:
    kind: Kind = "auto"  # dataset layout (auto: detected from the folder)
    split: Split = 1  # official split (UCF101/HMDB51: 1-3); 4: a validation split inside split 1 (embedded dataset; manifests: 4-6)
    cache: str | None = None  # frame cache from `vidssl preprocess` (the frame size then comes from it)
    frame_size: Size = None  # HxW frames are resized to; unset: the paper's for the task, or the cache's
    crop: Annotated[int, Range(8)] = 112  # square crop side fed to the network


@dataclass(kw_only=True)
class TaskOptions:
    task: TaskName = "rotation"  # pretext task (random_labels: the control, targets drawn at random)
    rotations: Annotated[RotationSet, arg(metavar="{0,90|0,90,180|90,180,270|0,90,180,270|8way|360}")] = "0,90,180,270"  # rotation set (3DRotNet Table 3; 8way: 45-degree steps; 360: regression)
    rotation_mode: Literal["all", "random"] = "all"  # all: every rotation of every clip in the batch (paper); random: one per clip
    regression_loss: Literal["l1", "l2"] = "l1"  # loss of the 360-degree regression
    num_clips: Annotated[int, Range(2, 5)] = 3  # clips per clip-order tuple (VCOP: 2 to 5)
    interval: NonNegative[int] = 8  # frames between the clips of a tuple
    order_head: Literal["paper", "centered"] = "paper"  # paper: VCOP's pairwise head; centered: tuple mean removed first
    rotation_weight: NonNegative[float] = 1.0  # joint task: weight of the rotation loss
    order_weight: NonNegative[float] = 1.0  # joint task: weight of the clip-order loss


@dataclass(kw_only=True)
class EncoderOptions:
    init: str = "random"  # a vidssl checkpoint (pretraining or fine-tuning), or random (the baseline)
    backbone: str = "r3d_10"  # backbone for --init random
    width: Width = 1.0  # channel width for --init random
    seed: int = 0  # seed of the random initialisation
    modality: Literal["auto", "rgb", "dif"] = "auto"  # input: auto is the checkpoint's (rgb for --init random); the random baseline of a DIF network needs dif
    bn_stats: Literal["checkpoint", "train"] = "checkpoint"  # batch-norm statistics: the network's, or re-estimated on the training videos (the control for random weights)
    clips: Positive[int] = 10  # clips per video, evenly spaced, centre crop
    clip_length: Positive[int] | None = None  # frames per clip; unset: the checkpoint's, else 16
    batch_size: Positive[int] = 4  # videos per batch
    workers: NonNegative[int] = 0  # DataLoader workers
    progress: bool = True  # progress bars


# ---------------------------------------------------------------------------------------------
# Commands

# Per-task defaults from the papers, filled in for the unset (None) fields of PretrainConfig.
PAPER = {
    "rotation": {  # 3DRotNet 4.2
        "backbone": "resnet18_3d",
        "frame_size": (136, 136),
        "batch_size": 32,
        "lr": 0.1,
        "lr_decay_every": 24_000,
        "iters": 104_000,
        "epochs": None,
    },
    "clip_order": {  # VCOP 4
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
PAPER["random_labels"] = PAPER["rotation"]  # the control trains as the rotation task does


@dataclass(kw_only=True)
class PretrainConfig(TaskOptions, LoopOptions, DataOptions, TrainRuntimeOptions):
    """Unset (None) fields take the paper's value for the task: see PAPER and `resolve_pretrain`."""

    dataset: Dataset = field(kw_only=False)  # dataset folder (UCF101/HMDB51/Kinetics layout or any folder of videos)
    out: str = "runs/pretrain"  # output folder: checkpoints/, log.csv, tb/, config.json, config.yaml
    overwrite: bool = False  # OUT already holds a run: move it aside to OUT.old-N (else refused; --resume continues it)
    modality: Modality = "rgb"  # input: RGB frames or frame differences (DIF)
    clip_length: Positive[int] = 16  # frames per clip (16, 32, 64)
    backbone: str | None = None  # unset: resnet18_3d (rotation, joint), r3d_10 (clip order)
    width: Width = 1.0  # backbone channel width multiplier (0.25 for CPU runs)
    flip: Probability = 0.5  # horizontal flip probability
    on_short: Literal["skip", "loop"] = "skip"  # videos too short for the clips: skip or loop them (clip tuples never loop)
    resample: Positive[int] | None = None  # evenly resample every video to N frames first (3DRotNet: 160 Kinetics, 90 MiT); a cache made with --resample sets it
    val_videos: NonNegative[int] = 800  # training videos held out for validation (VCOP), at most 10% of the dataset
    data_fraction: Fraction = 1.0  # pretrain on a seeded fraction of the videos (3DRotNet Table 4)
    max_videos: Positive[int] | None = None  # pretrain on at most N videos, a seeded subset (3DRotNet Table 4: 100,000 / 200,000 / 400,000)
    keep_every: NonNegative[int] = 0  # also keep checkpoints/stepNNNNNNN every N steps (eval-pretext series; 0: never)
    seed: int = 0  # the same seed gives the same run on one machine


def resolve_pretrain(cfg: PretrainConfig) -> PretrainConfig:
    """The paper's values for the task in place of the unset fields (a new config)."""
    paper = PAPER[cfg.task]
    fill = {k: paper[k] for k in ("backbone", "batch_size", "lr", "lr_decay_every") if getattr(cfg, k) is None}
    if cfg.frame_size is None and cfg.cache is None:
        fill["frame_size"] = paper["frame_size"]
    if cfg.iters is None and cfg.epochs is None:
        fill["iters"], fill["epochs"] = paper["iters"], paper["epochs"]
    return dataclasses.replace(cfg, **fill)


@dataclass(kw_only=True)
class FinetuneConfig(LoopOptions, DataOptions, TrainRuntimeOptions):
    """Defaults: 3DRotNet 4.2 (SGD lr 0.008 x0.1 every 4,000 steps, 100 epochs, 112 crops of 136x136)."""

    dataset: Dataset = field(kw_only=False)  # labelled dataset (UCF101/HMDB51/Kinetics layout)
    init: str = "scratch"  # a vidssl checkpoint (backbone loaded strictly), or scratch
    out: str = "runs/finetune"  # output folder: results.json, one folder per seed
    overwrite: bool = False  # OUT already holds a run: move it aside to OUT.old-N (else refused; --resume continues it)
    backbone: str | None = None  # for --init scratch (unset: resnet18_3d); must match a checkpoint's
    width: Width | None = None  # for --init scratch (unset: 1.0)
    frame_size: Size = (136, 136)  # HxW frames are resized to (3DRotNet; VCOP 128x171)
    flip: Probability = 0.5  # horizontal flip probability in training
    clip_length: Positive[int] | None = None  # frames per clip; unset: the checkpoint's, else 16
    modality: Literal["auto", "rgb", "dif"] = "auto"  # auto: the checkpoint's (rgb for scratch)
    freeze_until: Block = "none"  # freeze every block before it (3DRotNet Fig. 4a); all: the whole backbone
    shots: Positive[int] | None = None  # keep k labelled training videos per class (few-shot, 3DRotNet Table 5)
    train_fraction: Fraction = 1.0  # keep a seeded fraction of the training videos of every class
    seeds: str = "0"  # comma-separated seeds; several runs report mean and spread
    batch_size: Positive[int] = 32  # clips per step (over all processes under torchrun)
    epochs: Positive[int] | None = 100  # training epochs
    lr: Positive[float] = 0.008  # initial learning rate (3DRotNet)
    lr_decay_every: NonNegative[int] = 4000  # steps between x0.1 decays (0: never)
    test_clips: Positive[int] = 10  # clips per test video, evenly spaced
    val_videos: NonNegative[int] | None = 0  # training videos held out for validation each epoch (0: none); unset: VCOP's 800 (HMDB51: 400)
    test_only: bool = False  # only test --init, a fine-tuned checkpoint with its classifier (torchvision's --test-only)
    test_checkpoint: Literal["last", "best"] = "last"  # the weights tested: the last, or those of lowest validation loss (VCOP; needs --val-videos)


@dataclass(kw_only=True)
class RetrieveConfig(EncoderOptions, DataOptions, RuntimeOptions):
    """VCOP 4.1: test videos query training videos by cosine similarity of their features."""

    dataset: Dataset = field(kw_only=False)  # dataset whose test videos query its training videos
    out: str = "runs/retrieve"  # output folder: results.json, features, neighbours.csv
    overwrite: bool = False  # OUT holds results of other settings: move them aside to OUT.old-N (else refused)
    gallery: str | None = None  # another dataset whose training videos form the gallery (cross-dataset)
    gallery_cache: str | None = None  # frame cache of the gallery dataset
    feature: FeatureKind = "vcop"  # vcop: conv5 max-pooled (9216-d at 16x112x112); pooled: 512-d; convN: block N averaged
    frame_size: Size = None  # HxW frames are resized to; unset: the checkpoint's, else 128x171 (VCOP)
    crop: Annotated[int, Range(8)] | None = None  # centre crop side; unset: the checkpoint's, else 112
    reuse_features: bool = True  # read cached features from OUT when they match these settings
    neighbours: Positive[int] = 5  # nearest neighbours listed per query in neighbours.csv


@dataclass(kw_only=True)
class ProbeConfig(EncoderOptions, DataOptions, RuntimeOptions):
    """Features (pooled, or conv5 max-pooled) averaged over each video's clips; a linear and a k-NN classifier."""

    dataset: Dataset = field(kw_only=False)  # labelled dataset (train split fits, test split scores)
    out: str = "runs/probe"  # output folder: probe.json and the cached features
    overwrite: bool = False  # OUT holds results of other settings: move them aside to OUT.old-N (else refused)
    frame_size: Size = None  # HxW frames are resized to; unset: the checkpoint's, else 128x171 (VCOP)
    crop: Annotated[int, Range(8)] | None = None  # centre crop side; unset: the checkpoint's, else 112
    k: Positive[int] = 20  # neighbours of the k-NN classifier
    knn_norm: Literal["none", "center", "standardize"] = "none"  # features the k-NN compares: as they are; minus the training mean; standardised per dimension
    weight_decay: NonNegative[float] = 1e-3  # L2 penalty of the linear probe
    feature: FeatureKind = "pooled"  # pooled: conv5 global-average-pooled; vcop: conv5 max-pooled (VCOP's retrieval feature); conv2..conv4: that block, averaged


@dataclass(kw_only=True)
class EvalPretextConfig(RuntimeOptions):
    checkpoints: Annotated[str, Positional, arg(metavar="CHECKPOINTS")] = field(kw_only=False)  # pretraining checkpoints, comma-separated, or a checkpoints/ folder (every one, by step)
    dataset: Dataset = field(kw_only=False)  # dataset to measure the pretext on (e.g. UCF101 after pretraining on Kinetics)
    out: str = "runs/eval-pretext"  # output folder: pretext.csv, pretext.json
    overwrite: bool = False  # OUT holds results of other settings: move them aside to OUT.old-N (else refused)
    kind: Kind = "auto"  # dataset layout
    split: Split = 1  # official split (UCF101/HMDB51: 1-3); 4: a validation split inside split 1 (embedded dataset; manifests: 4-6)
    subset: Subset = "test"  # which videos
    cache: str | None = None  # frame cache (else frames are resized as in pretraining)
    draws: Positive[int] = 1  # random draws (rotations, orders, clips) per video
    batch_size: Positive[int] = 8  # clips or tuples per batch
    downstream: str | None = None  # comma-separated fine-tuning results.json, one per checkpoint (3DRotNet Fig. 4b)
    progress: bool = True  # progress bars


@dataclass(kw_only=True)
class VisualizeConfig(RuntimeOptions):
    what: Annotated[Literal["attention", "kernels", "retrieval", "curves"], Positional, arg(metavar="WHAT")] = field(kw_only=False)  # which picture
    source: Annotated[str, Positional, arg(metavar="SOURCE")] = field(kw_only=False)  # attention/kernels: a checkpoint; retrieval: a `vidssl retrieve` --out folder; curves: a run folder
    video: str | None = None  # attention: the video to show; unset: the first of --dataset
    dataset: str | None = None  # attention: a dataset to take the first video from
    compare: str | None = None  # kernels: a second checkpoint shown beside the first
    out: str = "runs/pictures"  # folder for the PNG
    frame_size: Size = (112, 112)  # attention: HxW the clip is resized to (square, for rotations)
    clip_length: Positive[int] = 16  # attention: frames in the clip
    queries: Positive[int] = 6  # retrieval: queries shown
    channels_last: bool = False  # channels_last_3d memory (one clip: no faster)


@dataclass
class FuseConfig:
    a: Annotated[str, Positional, arg(metavar="A")]  # a fine-tuning run folder (OUT/seedN) or its scores.safetensors, e.g. the RGB model
    b: Annotated[str, Positional, arg(metavar="B")]  # the other run, e.g. the DIF model
    out: str | None = None  # where to write fusion.json; unset: beside A


@dataclass
class PreprocessConfig:
    dataset: Dataset = field(kw_only=False)  # dataset folder (UCF101/HMDB51/Kinetics layout or any folder of videos)
    out: str  # cache folder to create or complete
    kind: Kind = "auto"  # layout of the dataset
    format: Literal["jpeg", "raw"] = "jpeg"  # jpeg: ~8x smaller; raw: uint8, memory-mapped, fastest
    size: Size = (128, 171)  # HxW of stored frames (VCOP 128x171, 3DRotNet 136x136); none keeps the video's
    resample: Positive[int] | None = None  # evenly resample every video to N frames (3DRotNet: 160 Kinetics, 90 MiT)
    quality: Annotated[int, Range(1, 100)] = 90  # JPEG quality
    workers: NonNegative[int] = 0  # parallel processes (0: one per core)
    shard: str | None = None  # I/N: cache only the I-th of N equal parts of the videos (a cluster job array; under torchrun: RANK/WORLD_SIZE)
    progress: bool = True  # show a progress bar


@dataclass
class StatsConfig:
    dataset: Dataset = field(kw_only=False)  # dataset folder
    kind: Kind = "auto"  # layout of the dataset
    split: Split = 1  # official split (UCF101/HMDB51: 1-3); 4: a validation split inside split 1 (embedded dataset; manifests: 4-6)
    cache: str | None = None  # frame cache made by `vidssl preprocess` (else videos are probed)
    clip_length: Positive[int] = 16  # frames a clip needs; shorter videos are counted as too short


@dataclass(kw_only=True)
class SynthConfig:
    classes: Annotated[int, Range(1, 10)] = 10  # how many of the 10 motion classes (taken in order)
    groups: Positive[int] = 25  # gXX groups (UCF101 has 25); each shares actor and scene across classes
    clips: Positive[int] = 4  # cYY clips per group and class
    frames: Positive[int] = 80  # frames per video (clip order needs >= 64: 3 clips x 16 + 2 gaps x 8)
    height: Positive[int] = 96  # frame height in pixels (even)
    width: Positive[int] = 128  # frame width in pixels (even)
    fps: Positive[int] = 25  # frames per second written in the files
    speeds: Literal["accelerate", "mixed"] = "accelerate"  # accelerate: every motion starts at rest and speeds up; mixed: half of them start fast and slow to rest
    seed: int = 0  # the same seed writes the same videos


@dataclass
class SynthCommand(SynthConfig):
    out: Annotated[str, Positional, arg(metavar="OUT")] = "data/synth"  # folder to write UCF-101/ and ucfTrainTestlist/ into
    workers: NonNegative[int] = 0  # parallel processes (0: one per core)


@dataclass
class ConvertConfig:
    """Weights out of vidssl (torchvision state_dict, model folder, ONNX) and in (torchvision:FILE -> a vidssl checkpoint)."""

    source: Annotated[str, Positional, arg(metavar="SOURCE")] = field(kw_only=False)  # a vidssl checkpoint, a model folder (config.json + model.safetensors), or torchvision:FILE (an r3d_18 / r2plus1d_18 state_dict, .pth or .safetensors)
    out: Annotated[str, Positional, arg(metavar="OUT")] = field(kw_only=False)  # what to write: a checkpoint NAME (vidssl), FILE.pt or FILE.safetensors (torchvision), a folder (hf), FILE.onnx (onnx); never overwritten
    to: Literal["vidssl", "torchvision", "hf", "onnx"] = "vidssl"  # the format of OUT
    num_classes: Positive[int] = 400  # torchvision: classes of the fc written when SOURCE has no classifier (a new fc; a fine-tuned checkpoint keeps its own)
    seed: int = 0  # seed of that new fc
    opset: Positive[int] = 18  # ONNX opset (the torch.export-based exporter's own)


@dataclass
class EmbedConfig(RuntimeOptions):
    """One feature per video, the clips prepared as the network was trained; OUT.safetensors holds `features` and, in its metadata, the videos (row order) and the settings."""

    checkpoint: Annotated[str, Positional, arg(metavar="CHECKPOINT")] = field(kw_only=False)  # a vidssl checkpoint, a model folder, or torchvision:FILE
    videos: Annotated[tuple[str, ...], Positional, arg(metavar="VIDEOS")] = field(kw_only=False)  # video files and folders (searched recursively)
    out: str = "embeddings.safetensors"  # output file (a killed run resumes from OUT.parts/ when the settings are the same)
    overwrite: bool = False  # OUT exists: replace it (else refused)
    clips: Positive[int] = 10  # clips per video, evenly spaced
    clip_length: Positive[int] | None = None  # frames per clip; unset: the checkpoint's
    feature: FeatureKind = "pooled"  # pooled: conv5 global average (512 at full width); vcop: conv5 max-pooled (1,2,2), flattened; conv2..conv4: that block, averaged
    per_clip: bool = False  # keep every clip's feature: (videos, clips, D) instead of their mean (videos, D)
    save_every: Positive[int] = 100  # videos between partial saves
    progress: bool = True  # progress bar


@dataclass
class InfoConfig:
    frames: Positive[int] = 16  # clip length T
    size: Size = (112, 112)  # clip HxW
    width: Width = 1.0  # channel width multiplier
    backbone: str | None = None  # one backbone; unset: all


@dataclass
class DemoConfig:
    out: str = "runs/demo"  # output folder: dataset, cache, runs, pictures, report.md/html/json
    overwrite: bool = False  # OUT already holds a demo: move it aside to OUT.old-N (else refused)
    quick: bool = False  # a tiny version (under 2 minutes) that checks every stage, not the numbers
    seed: int = 0  # seed of every stage
    workers: NonNegative[int] = 0  # parallel processes for generation and caching (0: one per core)


@dataclass
class ReproduceConfig:
    name: Annotated[str | None, Positional, arg(metavar="NAME")] = None  # the recipe, named after its paper table (`--list` shows them)
    data: str | None = None  # folder holding the datasets: ROOT/UCF101, ROOT/HMDB51, ROOT/kinetics, ROOT/mit (a ROOT/X-cache beside one is used); smoke scale: where the embedded dataset is written (unset: beside --out)
    scale: Literal["full", "smoke"] = "full"  # full: the paper's protocol (GPU, real data); smoke: the same stages at CPU size on the embedded dataset, in minutes
    out: str | None = None  # output folder: one folder per stage, table.md, table.json; unset: runs/reproduce/NAME[-smoke]
    seeds: str | None = None  # comma-separated seeds for every fine-tuning stage and every stage that runs per seed (the recipe's seeds: list); unset: the recipe's
    stages: str | None = None  # comma-separated stage names: run only these and the earlier stages they start from (the table keeps the rows whose stages ran); unset: every stage
    device: Device = "auto"  # where the networks run
    list: bool = False  # list the recipes: what each reproduces and which datasets it needs

