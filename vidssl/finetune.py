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

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from . import backbones
from .checkpoint import CheckpointError, load_encoder, load_strictly, load_weights, read_meta
from .config import FinetuneConfig, check_ranges, to_plain, write_config
from .data.datasets import detect_kind, load_dataset
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.sampling import RandomClip, UniformClips, split_videos
from .data.transforms import clip_frames, eval_transform, to_input, train_transform
from .runs import claim
from .runtime import Runtime, launched_main
from .train import fit, loop_config

log = logging.getLogger("vidssl")
FREEZE = ("none", "conv2", "conv3", "conv4", "conv5", "all")
__all__ = ["Classifier", "FinetuneConfig", "few_shot_indices", "finetune", "predict", "score_report"]


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
    model: nn.Module, dataset, modality: str, runtime: Runtime, batch_size: int = 4, workers: int = 0, progress=False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, K, C)`` softmax probabilities of every clip of every video, and the labels. A video
    that fails to decode is left out with a warning and removed from ``dataset`` (its records
    match the rows)."""
    model.eval()
    probs, labels, failed, failures = [], [], [], FailureLog()
    loader = data_loader(dataset, batch_size, num_workers=workers)
    for clips, y, _, bad in tqdm(loader, desc="test", disable=not (progress and runtime.main), leave=False):
        failures.note(bad)
        failed += bad
        if len(clips) == 0:
            continue
        b, k = clips.shape[:2]
        x = runtime.input(to_input(clips.flatten(0, 1).to(runtime.device), modality))
        with runtime.autocast():
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
    backbone, info = load_encoder(cfg.init)
    for key, want in (("backbone", cfg.backbone), ("width", cfg.width)):
        if want is not None and want != getattr(info, key):
            raise CheckpointError(f"{cfg.init}: checkpoint of {key} {getattr(info, key)!r}, not {want!r}; drop --{key}")
    source = {
        "init": info.path,
        "backbone": info.backbone,
        "width": info.width,
        "pretext": info.task,
        "step": info.step,
        "modality": info.modality,
        "clip_length": info.clip_length,
    }
    return backbone, source


def _load_classifier(model: Classifier, path: str, classes: list[str]) -> dict:
    """--test-only: a fine-tuned checkpoint's backbone and classifier into ``model``, strictly."""
    meta, weights = load_weights(path)
    if meta.get("kind") != "finetune":
        raise CheckpointError(f"{path}: --test-only tests a fine-tuned checkpoint (with its classifier), "
                              f"not a {meta.get('kind')!r} one; drop --test-only to fine-tune it")  # fmt: skip
    if meta.get("classes") != classes:
        raise CheckpointError(f"{path}: fine-tuned on {len(meta.get('classes') or [])} other classes than the "
                              f"dataset's {len(classes)}; test it on the dataset it was fine-tuned on")  # fmt: skip
    load_strictly(model, {k: v.to(next(model.parameters()).device) for k, v in weights.items()}, path)
    return {"checkpoint": os.path.abspath(path), "step": meta.get("step")}


def finetune_seed(cfg: FinetuneConfig, seed: int, rt: Runtime) -> dict:
    """One fine-tuning run and its test; returns its results (also written to OUT/seed{seed}/).
    Under torchrun the training batches and the test videos are sharded over the ranks."""
    out = os.path.join(cfg.out, f"seed{seed}")
    torch.manual_seed(seed)
    backbone, source = _init_backbone(cfg)
    modality = source["modality"] if cfg.modality == "auto" else cfg.modality
    length = cfg.clip_length or source["clip_length"]
    frames = clip_frames(length, modality)
    workers = cfg.workers if cfg.workers is not None else min(os.cpu_count() or 1, 8)
    common = dict(
        split=cfg.split, cache=cfg.cache, size=None if cfg.cache else cfg.frame_size, progress=cfg.progress and rt.main
    )
    kind = cfg.kind if cfg.kind != "auto" else detect_kind(cfg.dataset)
    train_all = load_dataset(
        kind,
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
    # VCOP holds training videos out for validation (800; HMDB51 400) and tests the checkpoint of
    # lowest validation loss; 3DRotNet tests the last one.
    n_val = cfg.val_videos if cfg.val_videos is not None else (400 if kind == "hmdb51" else 800)
    rest, val_idx = split_videos(len(train_all), n_val, 1.0, seed)
    if cfg.test_checkpoint == "best" and not val_idx:
        raise ValueError("--test-checkpoint best needs validation videos (--val-videos N, or unset for VCOP's)")
    shots = few_shot_indices([train_all.labels[i] for i in rest], cfg.shots, cfg.train_fraction, seed)
    keep = [rest[i] for i in shots]
    train_set = train_all.select(keep)
    val_set = train_all.select(val_idx, transform=eval_transform(cfg.crop), seed=seed + 1) if val_idx else None
    test_set = load_dataset(
        kind,
        cfg.dataset,
        subset="val" if kind == "kinetics" else "test",  # Kinetics-style data is tested on val/, as stats says
        sampler=UniformClips(cfg.test_clips, frames),
        transform=eval_transform(cfg.crop),
        on_short="loop",
        **common,
    )
    rt.announce()  # after the data checks, as in pretrain
    model = rt.prepare(Classifier(backbone, len(train_all.classes), cfg.freeze_until), train=True)
    batch = max(1, min(cfg.batch_size, len(train_set) // rt.world))
    steps_per_epoch = len(train_set) // (batch * rt.world)  # each rank sees its shard of every epoch
    total = cfg.iters if cfg.iters is not None else cfg.epochs * steps_per_epoch
    loop = loop_config(cfg, batch_size=batch, total_steps=total, workers=workers, seed=seed)
    meta = {
        "kind": "finetune",
        "backbone": source["backbone"],
        "width": source["width"],
        "task": f"finetune {len(train_all.classes)} classes",
        "modality": modality,
        "clip_length": length,
        "frame_size": list(train_all.size) if train_all.size else None,  # the frames it saw (a cache's too)
        "crop": cfg.crop,
        "classes": train_all.classes,
        "source": source,
        "config": to_plain(cfg),
        "seed": seed,
        "bf16": rt.bf16,  # the precision it trained in (a resume elsewhere says when it changes)
    }
    if rt.main and cfg.test_only:
        print(f"finetune seed {seed} | testing {cfg.init} | {len(test_set)} test videos | {rt.describe()}")
    elif rt.main:
        held = f", {len(val_idx)} held out for validation" if val_idx else ""
        print(
            f"finetune seed {seed} | {meta['backbone']} from {source['init']} | {len(train_set)} of "
            f"{len(train_all)} training videos ({len(train_all.classes)} classes{held}) | "
            f"{len(test_set)} test videos | "
            f"frozen: {', '.join(model.frozen) or 'none'} | batch {batch} x {rt.world} | {total} steps | "
            f"{rt.describe()}"
        )

    def step_fn(m, batch_, step, train=True):
        x = rt.input(to_input(batch_[0].to(rt.device, non_blocking=True), modality))
        y = batch_[1].to(rt.device)
        with rt.autocast():
            logits = m(x)
        loss = F.cross_entropy(logits.float(), y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}

    if cfg.test_only:
        os.makedirs(out, exist_ok=True)
        tested = _load_classifier(model, cfg.init, train_all.classes)
    else:
        resume = cfg.resume and os.path.isfile(os.path.join(out, "checkpoints", "last.json"))  # else: not started
        summary = fit(model, step_fn, train_set, val_set, loop, out, meta, rt, resume=resume)
        tested = {"checkpoint": "last", "step": summary["steps"]}
    if cfg.test_checkpoint == "best" and not cfg.test_only:
        best_meta, weights = load_weights(summary["best"])
        model.load_state_dict(weights)
        tested = {"checkpoint": "best", "step": best_meta["step"], "val_loss": summary["best_val_loss"]}
    test = lambda part: predict(model, part, modality, rt, workers=workers, progress=cfg.progress)
    probs, labels = rt.run_sharded(test_set, test)
    report = score_report(probs, labels, train_all.classes)
    if rt.main:
        save_file(
            {"clip_probs": probs.contiguous(), "labels": labels.contiguous()},
            os.path.join(out, "scores.safetensors"),
            metadata={
                "videos": json.dumps([r.rel for r in test_set.records]),
                "classes": json.dumps(train_all.classes),
            },
        )
    result = {
        "seed": seed,
        "train_videos": len(train_set),
        "train_names": [r.rel for r in train_set.records],
        **report,
        "val_videos": len(val_idx),
        "tested": tested,
        "skipped": {"train": len(train_all.skipped), "test": len(test_set.skipped)},  # unreadable or bad entries
        "source": source,
    }
    if rt.main:
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def summarize(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one value) of per-seed results."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": spread, "values": list(values)}


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
    seeds = parse_seeds(cfg.seeds)
    if cfg.test_only and cfg.init == "scratch":
        raise ValueError("--test-only tests a fine-tuned checkpoint: name it with --init")
    if cfg.init != "scratch":
        read_meta(cfg.init)  # a missing checkpoint is the first thing to say, before the run folder
    claim(cfg.out, cfg, command="finetune", resume=cfg.resume, overwrite=cfg.overwrite,
          marker=os.path.join(cfg.out, "config.yaml"), main=launched_main())  # fmt: skip
    rt = Runtime.setup(cfg)
    if rt.main:
        write_config(cfg, cfg.out, "finetune")
    runs = [finetune_seed(cfg, s, rt) for s in seeds]
    summary = {key: summarize([r[key] for r in runs]) for key in ("video_top1", "clip_top1")}
    results = {"config": to_plain(cfg), "runs": runs, "summary": summary}
    if rt.main:
        with open(os.path.join(cfg.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results
