"""The frame cache: decode every video once, then read any clip without decoding a video.

Layout of a cache folder::

    CACHE/cache.json                      format, frame size, resampling (checked on every open)
    CACHE/<relative video path>.npy       format "raw":  uint8 (T, H, W, 3), memory-mapped on read
    CACHE/<relative video path>.jpgs      format "jpeg": header + offsets + one JPEG per frame
    CACHE/<entry>.src.json                what the entry was made from: the video's size and mtime,
                                          the entry's own size and frame count (checked when read)
    CACHE/skipped.json                    videos that could not be decoded, with the reason

An entry is used only when its ``.src.json`` says it was made from the video as it is now (same
size and modification time) and the entry is whole (its size and header agree). Otherwise it is a
"stale" or "damaged" entry: a bad video for the dataset (named, skipped, counted), rewritten by the
next ``vidssl preprocess``, and counted by ``vidssl stats --cache``. A file name too long for an
entry (a 248-character video name plus the entry's suffixes passes 255 bytes) is stored under a
shortened name with a hash of the full path.

"raw" is fastest and large (all of UCF101 at 128x171: ~160 GB); "jpeg" (default, quality 90) is
~8x smaller and decodes a 16-frame clip in a few milliseconds. Entries are written to a temporary
file and renamed, so an interrupted run leaves no half-written entry and a re-run skips what exists.
"""

from __future__ import annotations

import hashlib
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


NAME_MAX = 255  # bytes in one path component on Linux file systems
_SIDE = ".src.json"
_SPARE = len(".tmp-") + 32  # atomic writes add a temporary suffix


def entry_path(cache_root: str, rel: str, fmt: str) -> str:
    folder, name = os.path.split(rel)
    longest = len((name + _SUFFIX[fmt] + _SIDE).encode()) + _SPARE
    if longest > NAME_MAX:
        digest = hashlib.blake2b(rel.encode(), digest_size=8).hexdigest()
        name = name.encode()[:100].decode(errors="ignore") + "-" + digest
    return os.path.join(cache_root, folder, name + _SUFFIX[fmt])


def source_stamp(path: str) -> dict:
    """What identifies the bytes of a source video without reading them: size and mtime."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
            if ok and fmt == "jpeg":  # whole: the last frame's bytes end where the file ends
                base = _HEADER.size + 8 * (t + 1)
                ok = bool(np.all(np.diff(self._offsets) > 0)) and os.path.getsize(path) == base + int(self._offsets[-1])
        except (OSError, ValueError, struct.error) as e:
            raise VideoError(path, f"damaged cache entry ({e}); run `vidssl preprocess` again to rewrite it") from None
        if not ok or self.num_frames == 0:
            raise VideoError(
                path, "damaged cache entry (truncated or not a cache file); run `vidssl preprocess` again to rewrite it"
            )

    def read(self, indices) -> np.ndarray:
        try:
            return self._read(indices)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for damaged JPEG bytes
            raise VideoError(
                self.path, f"damaged cache entry ({str(e)[:80]}); run `vidssl preprocess` again to rewrite it"
            ) from None

    def _read(self, indices) -> np.ndarray:
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
        try:
            with open(meta) as f:
                d = json.load(f)
            d["size"] = tuple(d["size"]) if d.get("size") else None
            spec = CacheSpec(**d)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(
                f"{meta}: damaged cache description ({e}); build the cache again in a new folder"
            ) from None
        return cls(root, spec)

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

    def write(self, rel: str, stamp: dict, frames: np.ndarray) -> int:
        """Store one video's frames and, after them, what they were made from (``source_stamp`` of
        the video, taken before it was decoded: a change while decoding then reads as stale)."""
        path = self.entry(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size = write_entry(path, frames, self.spec)
        side = {"source": rel, **stamp, "bytes": size, "frames": int(len(frames))}
        write_atomic(path + _SIDE, lambda f: f.write(json.dumps(side).encode()))
        return size

    def check(self, rel: str, source: str | None) -> str:
        """'fresh', 'missing', 'stale' (no record, or the video changed since) or 'damaged'."""
        path = self.entry(rel)
        if not os.path.isfile(path):
            return "missing"
        try:
            with open(path + _SIDE) as f:
                side = json.load(f)
            made_from = (side["size"], side["mtime_ns"])
            whole = os.path.getsize(path) == side["bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            return "stale"
        if not whole:
            return "damaged"
        if source is not None:
            try:
                now = source_stamp(source)
            except OSError:
                return "fresh"  # the video is gone but its frames are whole: a cache outlives its source
            if (now["size"], now["mtime_ns"]) != made_from:
                return "stale"
        return "fresh"

    def opened(self, rel: str) -> CachedVideo:
        """One entry without its record read again: for the reads of a dataset that checked the
        entry once when it opened (``video``). The entry's own header is still checked."""
        return CachedVideo(self.entry(rel), self.spec.format)

    def video(self, rel: str, source: str | None = None) -> CachedVideo:
        """One entry, checked against ``source`` (the video it was made from) when given."""
        path = self.entry(rel)
        state = self.check(rel, source)
        if state == "missing":
            raise VideoError(path, "not in the frame cache; run `vidssl preprocess` on this dataset first")
        if state == "stale":
            raise VideoError(
                path,
                f"stale cache entry: {source} changed since it was cached (or the entry has no record); "
                "run `vidssl preprocess` again to refresh it",
            )
        if state == "damaged":
            raise VideoError(
                path,
                "damaged cache entry (its size is not the one written); run `vidssl preprocess` again to rewrite it",
            )
        return CachedVideo(path, self.spec.format)


def decode_for_cache(path: str, spec: CacheSpec) -> np.ndarray:
    """The frames a cache stores for one video: decoded, resized, optionally resampled."""
    info = probe(path)
    frames = read_frames(path, size=spec.size, info=info)
    if spec.resample:
        frames = frames[resample_indices(len(frames), spec.resample)]
    return frames
