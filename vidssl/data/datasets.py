"""Datasets that yield clips. Pretext targets are made elsewhere (vidssl.tasks).

One generic ``ClipDataset`` over a list of videos; ``ucf101``, ``hmdb51``, ``kinetics`` and
``video_folder`` only build that list from each dataset's layout. A sample is
``(clip, label)``: a uint8 clip ``(C, T, H, W)`` (or ``(K, C, T, H, W)`` when the sampling policy
gives K clips) and a 0-based label (-1 when unlabelled).

Every video is checked once when the dataset is built: unreadable videos, and videos too short for
the policy (unless ``on_short="loop"``), are skipped with one warning each and counted in
``dataset.skipped``, so a long run never meets them.
"""

from __future__ import annotations

import copy
import logging
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .cache import FrameCache
from .sampling import RandomClip, resample_indices, sample_seed
from .splits import (
    SplitError,
    dedupe,
    hmdb51_group,
    overlap,
    read_hmdb51_split,
    read_ucf101_split,
    refuse_overlap,
    resolve_entries,
    safe_relpath,
    ucf101_group,
)
from .video import VideoError, hidden, list_videos, probe, read_indices

log = logging.getLogger("vidssl")

KINDS = ("ucf101", "hmdb51", "kinetics", "manifest", "folder")
WARN_AT_MOST = 20  # skipped videos named one per line; the rest are counted


@dataclass(frozen=True)
class VideoRecord:
    rel: str  # path relative to the dataset root; also the key in a frame cache
    label: int = -1  # 0-based class, -1 when unlabelled
    group: str = ""  # videos of one group share actor/scene (UCF101 gXX); splits keep groups apart


class ClipDataset(Dataset):
    """Clips from a list of videos, decoded on the fly or read from a frame cache.

    Args:
        root: folder the records' paths are relative to.
        records: the videos.
        classes: class names indexed by label.
        sampler: a policy from vidssl.data.sampling (which frames a sample reads).
        transform: called as ``transform(clip, generator)`` on a uint8 ``(C, T', H, W)`` clip,
            where the K clips of a sample are joined along time so they share one crop and flip.
        cache: a frame cache folder (or FrameCache) made by ``vidssl preprocess`` from this root.
        size: ``(h, w)`` to resize frames to while decoding; taken from the cache when one is given.
        resample: evenly resample each video to this many frames first (3DRotNet protocol).
        on_short: "skip" videos shorter than the policy needs, or "loop" them.
        seed: clips are a pure function of (seed, epoch, index); see ``set_epoch``.
    """

    def __init__(
        self,
        root,
        records,
        classes=(),
        sampler=None,
        transform=None,
        cache=None,
        size=None,
        resample=None,
        on_short="skip",
        seed=0,
        name="videos",
        progress=None,
    ):
        if on_short not in ("skip", "loop"):
            raise ValueError(f"on_short must be 'skip' or 'loop', not {on_short!r}")
        if on_short == "loop" and not getattr(sampler, "loopable", True):
            raise ValueError(
                "clip-order tuples cannot loop short videos (their clips would share frames, a shortcut for the "
                "order); short videos are skipped: use --on-short skip, or shorter --clip-length / --interval"
            )
        self.root = os.fspath(root)
        self.classes = list(classes)
        self.sampler = sampler or RandomClip()
        self.transform = transform
        self.on_short = on_short
        self.seed, self.epoch, self.name = seed, 0, name
        self.cache = FrameCache.open(os.fspath(cache)) if isinstance(cache, (str, os.PathLike)) else cache
        size = tuple(size) if size is not None else None
        if self.cache is not None:
            spec = self.cache.spec
            if size is not None and size != spec.size or resample is not None and resample != spec.resample:
                raise ValueError(
                    f"{self.cache.root}: cache holds size={spec.size} resample={spec.resample}, "
                    f"not size={size} resample={resample}; drop these options or build a matching cache"
                )
            size, resample = spec.size, spec.resample
        self.size, self.resample = size, resample
        self.records, self.num_frames, self._infos, self.skipped = [], [], [], []
        self.looped = 0
        show = progress if progress is not None else len(records) > 200
        for rec in tqdm(records, desc=f"checking {name}", disable=not show, leave=False):
            try:
                n, info = self._measure(rec)
            except VideoError as e:
                self._skip(rec, str(e))
                continue
            if n < self.sampler.min_frames:
                if on_short == "skip":
                    self._skip(
                        rec,
                        f"{self._path(rec)}: {n} frames, shorter than the {self.sampler.min_frames} "
                        f"the sampling needs (on_short='loop' repeats short videos)",
                    )
                    continue
                self.looped += 1
            self.records.append(rec)
            self.num_frames.append(n)
            self._infos.append(info)
        self._say_skipped(len(records))

    def _say_skipped(self, total: int) -> None:
        """One warning line per skipped video (the first WARN_AT_MOST), then a count. When every video
        is skipped, the caller's one error line says it (e.g. --clip-length longer than any video)."""
        if not self.skipped:
            return
        if self.records:
            for _, reason in self.skipped[:WARN_AT_MOST]:
                log.warning("skipping %s", reason)
        more = len(self.skipped) - WARN_AT_MOST if self.records else len(self.skipped)
        tail = f"; {more} not named above" if more > 0 else ""
        log.warning("%s: skipped %d of %d videos (all in dataset.skipped%s)", self.name, len(self.skipped), total, tail)

    def _path(self, rec: VideoRecord) -> str:
        return os.path.join(self.root, rec.rel)

    def _skip(self, rec: VideoRecord, reason: str) -> None:
        self.skipped.append((rec.rel, reason))

    def _measure(self, rec: VideoRecord):
        if self.cache is not None:
            return self.cache.video(rec.rel, self._path(rec)).num_frames, None
        info = probe(self._path(rec))
        return (self.resample or info.num_frames), info

    def set_epoch(self, epoch: int) -> None:
        """New random clips each epoch, the same for the same (seed, epoch) on any worker count."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def frame_indices(self, i: int, g: torch.Generator) -> np.ndarray:
        """The ``(K, T)`` frame indices sample ``i`` reads (short videos looped)."""
        n = self.num_frames[i]
        idx = self.sampler(max(n, self.sampler.min_frames), g)
        return idx % n

    def read(self, i: int, indices: np.ndarray) -> np.ndarray:
        """uint8 frames ``(len, H, W, 3)`` of video ``i`` at ``indices`` (in resampled frame numbers)."""
        rec = self.records[i]
        if self.cache is not None:  # checked against its video once, in _measure
            return self.cache.opened(rec.rel).read(indices)
        info = self._infos[i]
        src = resample_indices(info.num_frames, self.resample)[indices] if self.resample else indices
        return read_indices(self._path(rec), src, size=self.size, info=info)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        idx = self.frame_indices(i, g)
        k, t = idx.shape
        frames = torch.from_numpy(self.read(i, idx.reshape(-1)))  # (K*T, H, W, 3)
        clip = frames.permute(3, 0, 1, 2)  # (C, K*T, H, W)
        if self.transform is not None:
            clip = self.transform(clip, g)
        clip = clip.contiguous()
        if getattr(self.sampler, "stacked", k > 1):
            clip = clip.reshape(clip.shape[0], k, t, *clip.shape[-2:]).transpose(0, 1)
        return clip, self.records[i].label

    def select(self, indices, **changes) -> ClipDataset:
        """A copy holding only the videos at ``indices`` (no video is probed again); ``changes``
        replace attributes such as ``transform`` or ``seed``."""
        new = copy.copy(self)
        new.records = [self.records[i] for i in indices]
        new.num_frames = [self.num_frames[i] for i in indices]
        new._infos = [self._infos[i] for i in indices]
        for name, value in changes.items():
            if not hasattr(self, name):
                raise AttributeError(f"ClipDataset has no attribute {name!r}")
            setattr(new, name, value)
        return new

    def forget(self, failed) -> None:
        """Drop videos that failed mid-run, ``[(index, path, reason)]`` (from vidssl.data.loading),
        in place, adding them to ``skipped``; evaluations call it so records match their results."""
        gone = {i for i, _, _ in failed}
        if not gone:
            return
        keep = [i for i in range(len(self.records)) if i not in gone]
        self.skipped = self.skipped + [(self.records[i].rel, reason) for i, _, reason in failed]
        self.records = [self.records[i] for i in keep]
        self.num_frames = [self.num_frames[i] for i in keep]
        self._infos = [self._infos[i] for i in keep]

    def summary(self) -> dict:
        """Statistics for reports: counts, classes, groups, frames, skipped."""
        frames = np.asarray(self.num_frames) if self.num_frames else np.zeros(1)
        per_class = Counter(r.label for r in self.records)
        return {
            "name": self.name,
            "videos": len(self.records),
            "classes": len(self.classes),
            "groups": len({r.group for r in self.records if r.group}),
            "videos_per_class_min": min(per_class.values()) if per_class else 0,
            "videos_per_class_max": max(per_class.values()) if per_class else 0,
            "frames_min": int(frames.min()),
            "frames_mean": float(frames.mean()),
            "frames_max": int(frames.max()),
            "looped_short": self.looped,
            "skipped": len(self.skipped),
            "stale_cache": sum("stale cache entry" in reason for _, reason in self.skipped),
            "damaged_cache": sum("damaged cache entry" in reason for _, reason in self.skipped),
        }


def _locate(root: str, kind: str, splits_dir: str | None, splits_name: str):
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: dataset folder not found")
    videos = video_root(root, kind)
    if splits_dir is None:
        for cand in (os.path.join(root, splits_name), os.path.join(os.path.dirname(videos.rstrip("/")), splits_name)):
            if os.path.isdir(cand):
                splits_dir = cand
                break
        else:
            raise SplitError(f"{root}: no {splits_name}/ folder found beside the videos; pass splits_dir")
    return videos, os.fspath(splits_dir)


def _from_split(videos, classes, items, rejected, where, group_of, **kwargs) -> ClipDataset:
    for _, reason in rejected:
        log.warning("skipping split line %s", reason)
    items, repeated = dedupe(items, where)
    if repeated:
        log.warning("%s: %d repeated line(s) ignored: each video is used once", where, repeated)
    found, missing = resolve_entries(videos, items, where)
    records = [VideoRecord(rel, label, group_of(rel)) for rel, label in found]
    ds = ClipDataset(videos, records, classes, **kwargs)
    ds.skipped = list(rejected) + missing + ds.skipped
    return ds


def ucf101(root, split: int = 1, subset: str = "train", splits_dir=None, **kwargs) -> ClipDataset:
    """UCF101 in its official layout: ``root/UCF-101/<Class>/*.avi`` and ``root/ucfTrainTestlist/``
    (``root`` may also be the UCF-101 folder itself, with the lists beside it)."""
    videos, splits_dir = _locate(root, "ucf101", splits_dir, "ucfTrainTestlist")
    classes, items, rejected = read_ucf101_split(splits_dir, split, subset)
    where = os.path.join(splits_dir, f"{subset}list0{split}.txt")
    lists = [os.path.join(splits_dir, f"{s}list0{split}.txt") for s in ("train", "test")]
    if all(os.path.isfile(p) for p in lists):
        refuse_overlap(overlap(splits_dir, split, "ucf101"), f"{lists[0]} and {lists[1]}")
    kwargs.setdefault("name", f"ucf101 split{split} {subset}")
    return _from_split(videos, classes, items, rejected, where, ucf101_group, **kwargs)


def hmdb51(root, split: int = 1, subset: str = "train", splits_dir=None, **kwargs) -> ClipDataset:
    """HMDB51 in its official layout: ``root/<class>/*.avi`` and ``testTrainMulti_7030_splits/``
    (inside ``root`` or beside it)."""
    videos, splits_dir = _locate(root, "hmdb51", splits_dir, "testTrainMulti_7030_splits")
    classes, items, rejected = read_hmdb51_split(splits_dir, split, subset)
    if subset in ("train", "test"):
        refuse_overlap(overlap(splits_dir, split, "hmdb51"), f"{splits_dir} split {split}")
    kwargs.setdefault("name", f"hmdb51 split{split} {subset}")
    return _from_split(videos, classes, items, rejected, splits_dir, hmdb51_group, **kwargs)


def kinetics(root, subset: str = "train", **kwargs) -> ClipDataset:
    """Kinetics-style folders ``root/<subset>/<class>/*.mp4``; classes from ``root/train`` if present."""
    root = os.fspath(root)
    base = os.path.join(root, subset)
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{base}: no '{subset}' folder; Kinetics-style data is <root>/<split>/<class>/*.mp4")
    class_src = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else base
    classes = sorted(d for d in os.listdir(class_src) if os.path.isdir(os.path.join(class_src, d)) and not hidden(d))
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for rel in list_videos(base):
        cls = rel.split(os.sep)[0]
        if cls not in index:
            raise SplitError(f"{os.path.join(base, rel)}: class folder {cls!r} is not among the training classes")
        records.append(VideoRecord(os.path.join(subset, rel), index[cls]))
    kwargs.setdefault("name", f"kinetics {subset}")
    return ClipDataset(root, records, classes, **kwargs)


MANIFEST = "manifest.csv"  # a folder with one is a manifest dataset (vidssl.data.manifest)


def video_folder(root, **kwargs) -> ClipDataset:
    """Every video under ``root`` (recursive), unlabelled: self-supervised pretraining on anything."""
    root = os.fspath(root)
    records = [VideoRecord(safe_relpath(rel, root)) for rel in list_videos(root)]
    if not records:
        raise FileNotFoundError(f"{root}: no video files found (looked for .avi, .mp4, .mkv, .webm, ...)")
    kwargs.setdefault("name", f"folder {os.path.basename(root.rstrip('/'))}")
    return ClipDataset(root, records, [], **kwargs)


def detect_kind(root) -> str:
    """Guess the layout of a dataset folder: ucf101, hmdb51, manifest, kinetics or folder."""
    root = os.fspath(root)
    if os.path.isdir(os.path.join(root, "ucfTrainTestlist")) or os.path.isdir(
        os.path.join(os.path.dirname(root.rstrip("/")), "ucfTrainTestlist")
    ):
        return "ucf101"
    if os.path.isdir(os.path.join(root, "testTrainMulti_7030_splits")) or os.path.isdir(
        os.path.join(os.path.dirname(root.rstrip("/")), "testTrainMulti_7030_splits")
    ):
        return "hmdb51"
    if os.path.isfile(os.path.join(root, MANIFEST)):
        return "manifest"
    if os.path.isdir(os.path.join(root, "train")) and any(
        os.path.isdir(os.path.join(root, "train", d)) for d in os.listdir(os.path.join(root, "train"))
    ):
        return "kinetics"
    return "folder"


VIDEO_DIRS = {"ucf101": "UCF-101", "hmdb51": "hmdb51"}


def video_root(root, kind: str = "auto") -> str:
    """The folder a dataset's video paths (and frame-cache keys) are relative to."""
    root = os.fspath(root)
    kind = detect_kind(root) if kind == "auto" else kind
    sub = VIDEO_DIRS.get(kind)
    return os.path.join(root, sub) if sub and os.path.isdir(os.path.join(root, sub)) else root


def load_dataset(
    kind: str,
    root,
    split: int = 1,
    subset: str = "train",
    *,
    sampler=None,
    transform=None,
    cache=None,
    size: tuple[int, int] | None = None,
    resample: int | None = None,
    on_short: str = "skip",
    seed: int = 0,
    progress: bool | None = None,
) -> ClipDataset:
    """A dataset by layout name (``auto`` detects it); the other arguments are ClipDataset's."""
    kwargs = dict(sampler=sampler, transform=transform, cache=cache, size=size, resample=resample,
                  on_short=on_short, seed=seed, progress=progress)  # fmt: skip
    if kind == "auto":
        kind = detect_kind(root)
    if kind == "ucf101":
        return ucf101(root, split, subset, **kwargs)
    if kind == "hmdb51":
        return hmdb51(root, split, subset, **kwargs)
    if kind == "kinetics":
        return kinetics(root, subset, **kwargs)
    if kind == "manifest":
        from .manifest import manifest

        return manifest(root, split, subset, **kwargs)
    if kind == "folder":
        return video_folder(root, **kwargs)
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of auto, {', '.join(KINDS)}")
