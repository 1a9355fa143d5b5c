"""Features of a backbone for whole videos (K clips each), and their cache on disk.

``extract_features`` is the one place a network meets an evaluation; everything after it
(retrieval, probes, kNN) is a pure function over tensors. ``video_features`` is what the commands
call: the dataset, the feature file kept in a run folder, and under torchrun the videos sharded
over the ranks and gathered back in order (the same features as one process).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import torch
from safetensors.torch import load_file, save
from torch import nn
from tqdm import tqdm

from .atomic import write_atomic
from .backbones import check_feature, clip_feature
from .checkpoint import EncoderInfo, load_encoder
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.transforms import memory_format, to_input

log = logging.getLogger("vidssl")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset,
    feature: str = "pooled",
    modality: str = "rgb",
    batch_size: int = 4,
    workers: int = 0,
    device="cpu",
    bf16: bool = False,
    progress: bool = True,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(V, K, D)`` float32 features of every video's K clips, and ``(V,)`` labels.

    ``feature="pooled"``: the global-average-pooled vector (512 at full width); ``"vcop"``: conv5
    max-pooled by (1,2,2) and flattened (VCOP 4.1; 9216 for 16x112x112); ``"conv2"`` .. ``"conv4"``:
    that block's output, global-average-pooled (backbones.clip_feature). Every video is counted:
    the loader never drops a last partial batch. A video that fails to decode is left out with a
    warning and removed from ``dataset`` (``dataset.forget``), so its records match the rows."""
    check_feature(feature)
    backbone.eval().to(device)
    if channels_last:  # 1.1-1.2x faster inference on CPU (bench/train_step.py)
        backbone.to(memory_format=torch.channels_last_3d)
    loader = data_loader(dataset, batch_size, shuffle=False, drop_last=False, num_workers=workers)
    feats, labels, failed, failures = [], [], [], FailureLog()
    device = torch.device(device)
    for clips, y, _, bad in tqdm(loader, desc="features", disable=not progress, leave=False):
        failures.note(bad)
        failed += bad
        if len(clips) == 0:
            continue
        if clips.dim() == 5:  # one clip per video
            clips = clips.unsqueeze(1)
        b, k = clips.shape[:2]
        x = memory_format(to_input(clips.flatten(0, 1).to(device), modality), channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f = clip_feature(backbone, x, feature)
        feats.append(f.float().view(b, k, -1).cpu())
        labels.append(torch.as_tensor(y))
    dataset.forget(failed)
    if not feats:
        raise ValueError(f"{getattr(dataset, 'root', 'dataset')}: no video could be decoded")
    return torch.cat(feats), torch.cat(labels)


def save_features(path: str, feats: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """Features, labels and what made them (JSON in the safetensors metadata)."""
    tensors = {"features": feats.contiguous(), "labels": labels.contiguous()}
    write_atomic(path, lambda f: f.write(save(tensors, metadata={"meta": json.dumps(meta)})))


def load_features(path: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: feature file not found")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata().get("meta", "{}"))
    t = load_file(path)
    return t["features"], t["labels"], meta


def open_encoder(opts) -> tuple[nn.Module, EncoderInfo]:
    """The network named by ``opts.init`` (EncoderOptions' fields): a vidssl checkpoint, or random
    weights of ``opts.backbone`` at ``opts.width`` seeded by ``opts.seed`` (the baseline)."""
    from . import backbones

    modality = getattr(opts, "modality", "auto")
    if opts.init == "random":
        torch.manual_seed(opts.seed)
        info = EncoderInfo(opts.backbone, opts.width, "rgb" if modality == "auto" else modality,
                           clip_length=opts.clip_length or 16)  # fmt: skip
        return backbones.build(opts.backbone, opts.width), info
    backbone, info = load_encoder(opts.init)
    if modality not in ("auto", info.modality):  # its first layer learned the other input
        raise ValueError(f"{opts.init}: trained on {info.modality} input; --modality {modality} would feed it another")
    if opts.clip_length:
        info = dataclasses.replace(info, clip_length=opts.clip_length)
    return backbone, info


def weights_digest(model: nn.Module) -> str:
    """A hash of a network's weights and buffers (names, shapes, dtypes, values): what a feature file
    is keyed on, so that retraining into the same checkpoint path never reuses old features.
    blake2b reads ~1 GB/s here: 0.1 s for r3d_18's 33M parameters."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe_encoder(opts, info: EncoderInfo, model: nn.Module) -> dict:
    """Where features come from, as results and feature files record it (with the weights' hash)."""
    bn = {"bn_stats": opts.bn_stats} if getattr(opts, "bn_stats", "checkpoint") != "checkpoint" else {}
    if opts.init == "random":
        return {"init": "random", "backbone": info.backbone, "width": info.width, "seed": opts.seed,
                "weights": weights_digest(model), **bn}  # fmt: skip
    return {"init": info.path, "step": info.step, "weights": weights_digest(model), **bn}


def source_fingerprint(ds) -> str:
    """A hash of what every video's clips are read from: each file's path, size and modification
    time (the frame-cache entry when a cache is used), so a replaced video makes new features."""
    h = hashlib.blake2b(digest_size=16)
    for rec in ds.records:
        path = ds.cache.entry(rec.rel) if ds.cache is not None else os.path.join(ds.root, rec.rel)
        try:
            st = os.stat(path)
            h.update(f"{rec.rel}:{st.st_size}:{st.st_mtime_ns};".encode())
        except OSError:
            h.update(f"{rec.rel}:missing;".encode())
    return h.hexdigest()


VCOP_FRAMES = (128, 171)  # VCOP 4.1: frames resized to 128x171, 112 centre crops


def preprocessing(opts, info: EncoderInfo) -> tuple[tuple[int, int], int]:
    """(frame size, crop) for features: the options' when set, else what the network was trained
    with (its checkpoint), else VCOP's 128x171 and 112."""
    size = opts.frame_size or info.frame_size or VCOP_FRAMES
    crop = opts.crop or info.crop or 112
    return tuple(size), crop


def clip_dataset(info: EncoderInfo, opts, dataset_path: str, subset: str, *, cache, kind: str, runtime):
    """One split of a dataset as features read it: K evenly spaced centre-cropped clips per video,
    at the network's frame size, clip length and modality (``preprocessing``)."""
    from .data.datasets import load_dataset
    from .data.sampling import UniformClips
    from .data.transforms import eval_transform

    frame_size, crop = preprocessing(opts, info)
    return load_dataset(
        kind,
        dataset_path,
        split=opts.split,
        subset=subset,
        cache=cache,
        size=None if cache else frame_size,
        sampler=UniformClips(opts.clips, info.frames),
        transform=eval_transform(crop),
        on_short="loop",
        progress=opts.progress and runtime.main,
    )


@torch.no_grad()
def recalibrate_batchnorm(backbone: nn.Module, dataset, modality: str = "rgb", batch_size: int = 4, workers: int = 0,
                          device="cpu", progress: bool = True) -> int:  # fmt: skip
    """Re-estimate every batch-norm layer's running mean and variance on ``dataset``'s clips, the
    weights unchanged; returns the clips seen. The control for "pretrained beats random": random
    weights whose normalisation has seen the training videos, so that a reported gain is the
    pretext task's and not the statistics' (the issue's kNN: clip order at chance on its pretext
    still beat random weights, 52.5 vs 29.2). Each layer's statistics are the mean over batches
    of its batch statistics (momentum None), every rank the same (all of ``dataset``)."""
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"{type(backbone).__name__} has no batch-norm layer to recalibrate")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average, not an exponential one
    backbone.eval().to(device)
    for m in bns:
        m.train()
    seen = 0
    loader = data_loader(dataset, batch_size, shuffle=False, drop_last=False, num_workers=workers)
    for clips, _, _, _ in tqdm(loader, desc="batch-norm statistics", disable=not progress, leave=False):
        if len(clips) == 0:
            continue
        x = clips.flatten(0, 1) if clips.dim() == 6 else clips
        backbone.forward_features(to_input(x.to(device), modality))
        seen += x.shape[0]
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    backbone.eval()
    if seen == 0:
        raise ValueError(f"{getattr(dataset, 'root', 'dataset')}: no clip to estimate batch-norm statistics from")
    return seen


def prepare_encoder(backbone: nn.Module, info: EncoderInfo, opts, *, cache, kind: str, runtime) -> None:
    """What an evaluation does to the network before its features: with ``--bn-stats train``, the
    batch-norm statistics re-estimated on the training videos (``recalibrate_batchnorm``)."""
    if getattr(opts, "bn_stats", "checkpoint") != "train":
        return
    ds = clip_dataset(info, opts, opts.dataset, "train", cache=cache, kind=kind, runtime=runtime)
    recalibrate_batchnorm(backbone, ds, info.modality, opts.batch_size, opts.workers, device=runtime.device,
                          progress=opts.progress and runtime.main)  # fmt: skip


def video_features(
    backbone: nn.Module,
    info: EncoderInfo,
    opts,
    dataset_path: str,
    subset: str,
    *,
    cache: str | None,
    kind: str,
    feature: str,
    runtime,
    save_as: str | None = None,
    source: dict | None = None,
):
    """``(V, K, D)`` features, ``(V,)`` labels and the dataset of one split of a dataset, K clips
    per video as ``opts`` (EncoderOptions and DataOptions fields) says. With ``save_as``, the
    features are kept in that file and read back next time when every setting that made them
    (and the list of videos) is the same."""
    frame_size, crop = preprocessing(opts, info)
    ds = clip_dataset(info, opts, dataset_path, subset, cache=cache, kind=kind, runtime=runtime)
    want = {
        **(source or {}),
        "feature": feature,
        "clips": opts.clips,
        "clip_length": info.clip_length,
        "crop": crop,
        "frame_size": list(frame_size) if frame_size and not cache else None,
        "modality": info.modality,
        "dataset": os.path.abspath(dataset_path),
        "subset": subset,
        "videos": [r.rel for r in ds.records],
        "sources": source_fingerprint(ds),
    }
    if save_as and getattr(opts, "reuse_features", True) and os.path.isfile(save_as):
        try:
            feats, labels, have = load_features(save_as)
        except Exception as e:  # a damaged cache file is only a cache: computed again, said once
            log.warning("%s: unreadable feature file (%s); computing the features again", save_as, str(e)[:80])
            have = None
        if have == want and torch.isfinite(feats).all():
            return feats, labels, ds
    feats, labels = runtime.run_sharded(
        ds,
        lambda part: extract_features(
            backbone,
            part,
            feature,
            info.modality,
            opts.batch_size,
            opts.workers,
            device=runtime.device,
            bf16=runtime.bf16,
            progress=opts.progress and runtime.main,
            channels_last=runtime.channels_last,
        ),
    )
    if not torch.isfinite(feats).all():
        bad = int((~torch.isfinite(feats)).flatten(1).any(1).sum())
        raise FloatingPointError(
            f"{source.get('init') if source else 'the network'}: NaN/inf features for {bad} of {len(feats)} videos of "
            f"{dataset_path} ({subset}); the weights or the inputs overflow (try --no-bf16), no table is made from them"
        )
    if save_as and runtime.main:
        want["videos"] = [r.rel for r in ds.records]  # without any video that failed to decode
        want["sources"] = source_fingerprint(ds)
        save_features(save_as, feats, labels, want)
    return feats, labels, ds
