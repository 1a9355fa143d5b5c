"""The frame cache: decode every video once, then read any clip without decoding a video.

Layout of a cache folder::

    CACHE/cache.json                      format, frame size, resampling (checked on every open)
    CACHE/<relative video path>.npy       format "raw":  uint8 (T, H, W, 3), memory-mapped on read
    CACHE/<relative video path>.jpgs      format "jpeg": header + offsets + one JPEG per frame
    CACHE/skipped.json                    videos that could not be decoded, with the reason

"raw" is fastest and large (all of UCF101 at 128x171: ~160 GB); "jpeg" (default, quality 90) is
~8x smaller and decodes a 16-frame clip in a few milliseconds. Entries are written to a temporary
file and renamed, so an interrupted run leaves no half-written entry and a re-run skips what exists.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from ..atomic import write_atomic
from .sampling import resample_indices
from .video import VideoError, probe, read_frames

FORMATS = ("jpeg", "raw")
_SUFFIX = {"raw": ".npy", "jpeg": ".jpgs"}
_MAGIC = b"VSSLJPG1"
_HEADER = struct.Struct("<8sIIII")  # magic, frames, height, width, reserved


@dataclass(frozen=True)
class CacheSpec:
    format: str = "jpeg"
    size: tuple[int, int] | None = (128, 171)  # (h, w) of stored frames; None keeps the video's size
    resample: int | None = None  # evenly resample every video to this many frames
    quality: int = 90  # JPEG quality

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown cache format {self.format!r}; choose one of {', '.join(FORMATS)}")


def entry_path(cache_root: str, rel: str, fmt: str) -> str:
    return os.path.join(cache_root, rel + _SUFFIX[fmt])


def write_entry(path: str, frames: np.ndarray, spec: CacheSpec) -> int:
    """Store uint8 (T, H, W, 3) frames; returns the bytes written."""
    if spec.format == "raw":
        write_atomic(path, lambda f: np.save(f, np.ascontiguousarray(frames)))
    else:
        blobs = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format="JPEG", quality=spec.quality)
            blobs.append(buf.getvalue())
        offsets = np.zeros(len(blobs) + 1, dtype="<u8")
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        t, h, w, _ = frames.shape

        def write(f):
            f.write(_HEADER.pack(_MAGIC, t, h, w, 0))
            f.write(offsets.tobytes())
            for b in blobs:
                f.write(b)

        write_atomic(path, write)
    return os.path.getsize(path)


class CachedVideo:
    """One cached video: ``num_frames`` and ``read(indices) -> uint8 (len, H, W, 3)``."""

    def __init__(self, path: str, fmt: str):
        self.path, self.format = path, fmt
        try:
            if fmt == "raw":
                self._array = np.load(path, mmap_mode="r")
                self.num_frames = int(self._array.shape[0])
                ok = self._array.ndim == 4 and self._array.dtype == np.uint8
            else:
                with open(path, "rb") as f:
                    magic, t, h, w, _ = _HEADER.unpack(f.read(_HEADER.size))
                    self._offsets = np.frombuffer(f.read(8 * (t + 1)), dtype="<u8").astype(np.int64)
                self.num_frames, self.shape = t, (h, w)
                ok = magic == _MAGIC and len(self._offsets) == t + 1
        except (OSError, ValueError, struct.error) as e:
            raise VideoError(path, f"unreadable cache entry ({e}); delete it and run preprocess again") from None
        if not ok or self.num_frames == 0:
            raise VideoError(path, "corrupt cache entry; delete it and run preprocess again")

    def read(self, indices) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if self.format == "raw":
            return np.ascontiguousarray(self._array[idx])
        lo, hi = int(idx.min()), int(idx.max())
        base = _HEADER.size + 8 * (self.num_frames + 1)
        with open(self.path, "rb") as f:  # one read for the span, then decode only what is asked
            f.seek(base + int(self._offsets[lo]))
            span = f.read(int(self._offsets[hi + 1] - self._offsets[lo]))
        out = np.empty((len(idx), *self.shape, 3), dtype=np.uint8)
        decoded = {}
        for k, i in enumerate(idx.tolist()):
            if i not in decoded:
                a, b = self._offsets[i] - self._offsets[lo], self._offsets[i + 1] - self._offsets[lo]
                decoded[i] = np.asarray(Image.open(io.BytesIO(span[a:b])).convert("RGB"))
            out[k] = decoded[i]
        return out


class FrameCache:
    """A cache folder. ``FrameCache.open(root)`` checks it exists; ``video(rel)`` reads one entry."""

    def __init__(self, root: str, spec: CacheSpec):
        self.root, self.spec = root, spec

    @classmethod
    def open(cls, root: str) -> FrameCache:
        meta = os.path.join(root, "cache.json")
        if not os.path.isfile(meta):
            raise FileNotFoundError(f"{root}: not a frame cache (no cache.json); build one with `vidssl preprocess`")
        with open(meta) as f:
            d = json.load(f)
        d["size"] = tuple(d["size"]) if d.get("size") else None
        return cls(root, CacheSpec(**d))

    @classmethod
    def create(cls, root: str, spec: CacheSpec) -> FrameCache:
        meta = os.path.join(root, "cache.json")
        if os.path.isfile(meta):
            existing = cls.open(root)
            if existing.spec != spec:
                raise ValueError(
                    f"{root} holds a cache made with {asdict(existing.spec)}, not {asdict(spec)}; "
                    "choose another --out folder or the same settings"
                )
            return existing
        os.makedirs(root, exist_ok=True)
        write_atomic(meta, lambda f: f.write(json.dumps(asdict(spec), indent=1).encode()))
        return cls(root, spec)

    def entry(self, rel: str) -> str:
        return entry_path(self.root, rel, self.spec.format)

    def has(self, rel: str) -> bool:
        return os.path.isfile(self.entry(rel))

    def video(self, rel: str) -> CachedVideo:
        path = self.entry(rel)
        if not os.path.isfile(path):
            raise VideoError(path, "not in the frame cache; run `vidssl preprocess` on this dataset first")
        return CachedVideo(path, self.spec.format)


def decode_for_cache(path: str, spec: CacheSpec) -> np.ndarray:
    """The frames a cache stores for one video: decoded, resized, optionally resampled."""
    info = probe(path)
    frames = read_frames(path, size=spec.size, info=info)
    if spec.resample:
        frames = frames[resample_indices(len(frames), spec.resample)]
    return frames
