"""Reading videos with PyAV: metadata, whole videos and exact frame ranges.

Frame ``i`` of a video is, by definition, the ``i``-th frame a full decode from the start yields.
Every read here returns exactly those frames, whatever the container does with timestamps.

Two kinds of streams need care:
- Ordinary streams (no frame reordering, or a container with real presentation timestamps such as
  MP4/MKV): each packet carries the timestamp of one frame, so frame ``i`` has the ``i``-th smallest
  packet timestamp and we can seek to the keyframe before it and decode only the range.
- AVI with B-frames (DivX "packed bitstream", common in HMDB51 and parts of UCF101): AVI stores decode
  timestamps only, the decoder hands frames out in display order with shuffled timestamps, and an
  N-VOP placeholder packet yields no frame. Timestamps cannot name frames there, so these are read by
  decoding from the start (still exact; use the frame cache for speed).
Seeking by timestamp is checked frame by frame against the expected timestamps; any surprise falls
back to decoding from the start, so a read is never off by one (AVI seeks may land a frame early).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import av
import numpy as np

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv")


class VideoError(Exception):
    """A video that cannot be read. ``str()`` is one line naming the file and the reason."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    # Timestamps of frames 0..n-1 in stream time base when seeking by timestamp is exact, else None.
    pts: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def seekable(self) -> bool:
        return self.pts is not None

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def _open(path: str):
    if not os.path.exists(path):
        raise VideoError(path, "file not found")
    if os.path.isdir(path):
        raise VideoError(path, "is a folder, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        # Some real AVIs (HMDB51) carry metadata that is not UTF-8; it must not stop the read.
        container = av.open(path, metadata_errors="ignore")
    except Exception as e:  # PyAV raises many types (InvalidDataError, OSError, ...)
        raise VideoError(path, f"not a readable video ({_reason(e, path)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _reason(e: Exception, path: str = "") -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if path:  # PyAV repeats the file name; the error already starts with it
        msg = msg.replace(f": '{path}'", "")
    return msg[:200]


def _reorders_without_pts(container, stream) -> bool:
    return bool(stream.codec_context.has_b_frames) and "avi" in container.format.name.split(",")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Metadata of a video: frame count (exact, as a full decode counts), fps, width, height.

    Reads packets only (no decoding) unless the stream is an AVI with B-frames, whose frames are
    counted by decoding. Raises VideoError for anything that is not a readable, non-empty video.
    """
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        declared = stream.frames or 0  # from the container header (0: unknown)
        width, height = stream.codec_context.width, stream.codec_context.height
        if _reorders_without_pts(container, stream):
            count = sum(1 for _ in container.decode(stream))
            pts = None
        else:
            stamps = [p.pts for p in container.demux(stream) if p.size > 0]
            if stamps and all(s is not None for s in stamps) and len(set(stamps)) == len(stamps):
                pts = np.sort(np.asarray(stamps, dtype=np.int64))
                count = len(pts)
            else:  # no usable timestamps: count by decoding
                container.seek(0)
                count = sum(1 for _ in container.decode(stream))
                pts = None
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(path, f"corrupt or truncated stream ({_reason(e)})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError(path, "has no decodable frames")
    # A file cut short (an interrupted copy or download) still opens and reads up to the cut; its
    # header still declares the full length. Real AVIs differ from their header by one frame (an
    # N-VOP placeholder), so only a clear shortfall counts.
    if declared > count + max(2, declared // 10):
        raise VideoError(path, f"truncated: its header declares {declared} frames, only {count} are there")
    if width <= 0 or height <= 0:
        raise VideoError(path, f"invalid frame size {width}x{height}")
    return VideoInfo(path, count, fps, width, height, pts)


def quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns that show a frame upright: a phone stores portrait video
    sideways with a display-matrix rotation (PyAV's ``frame.rotation``, degrees counter-clockwise),
    which decoding does not apply. Unapplied, rotation pretraining would learn from mislabelled clips."""
    degrees = round(getattr(frame, "rotation", 0) or 0)
    if degrees % 90:
        raise ValueError(f"display rotation of {degrees} degrees (only multiples of 90 are applied)")
    return (degrees // 90) % 4


def _to_array(frame, size: tuple[int, int] | None) -> np.ndarray:
    turns = quarter_turns(frame)
    if size is None:
        a = frame.to_ndarray(format="rgb24")
    else:
        h, w = size if turns % 2 == 0 else size[::-1]  # resized as stored, then turned upright
        a = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
    return np.ascontiguousarray(np.rot90(a, turns)) if turns else a


def _decode_from_start(container, stream, start: int, stop: int, size, pts=None) -> list[np.ndarray]:
    container.seek(0, stream=stream)
    out = []
    for i, frame in enumerate(container.decode(stream)):
        # A damaged packet can make the decoder drop its frame without an error: every later frame
        # would come out one place early. Where timestamps name the frames, that is caught here.
        if pts is not None and frame.pts is not None and i < len(pts) and frame.pts != pts[i]:
            raise ValueError(f"frame {i} did not decode (damaged stream)")
        if i >= start:
            out.append(_to_array(frame, size))
        if i + 1 >= stop:
            break
    return out


def _decode_by_seek(container, stream, pts, start, stop, size) -> list[np.ndarray] | None:
    """Frames [start, stop) by seeking to the keyframe before ``start``; None if anything is off."""
    target = int(pts[start])
    container.seek(target, stream=stream, backward=True, any_frame=False)
    out = []
    first = True
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        if first and frame.pts > target:  # seek overshot the frame we need
            return None
        first = False
        if frame.pts < target:
            continue
        if frame.pts != int(pts[start + len(out)]):
            return None
        out.append(_to_array(frame, size))
        if len(out) == stop - start:
            return out
    return None


def read_frames(
    path: str | os.PathLike,
    start: int = 0,
    num: int | None = None,
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Frames [start, start+num) as uint8 ``(T, H, W, 3)`` RGB; all frames when ``num`` is None.

    ``size=(h, w)`` resizes each frame (bilinear, as part of the colour conversion). ``info`` from
    ``probe`` avoids probing again. Raises VideoError naming the file for any failure.
    """
    path = os.fspath(path)
    info = info or probe(path)
    stop = info.num_frames if num is None else start + num
    if start < 0 or stop > info.num_frames or stop <= start:
        raise VideoError(path, f"frame range [{start}, {stop}) outside its {info.num_frames} frames")
    container, stream = _open(path)
    try:
        frames = None
        if info.seekable and start > 0:
            frames = _decode_by_seek(container, stream, info.pts, start, stop, size)
        if frames is None:
            frames = _decode_from_start(container, stream, start, stop, size, info.pts)
    except Exception as e:
        raise VideoError(path, f"decoding failed ({_reason(e)})") from None
    finally:
        container.close()
    if len(frames) != stop - start:
        raise VideoError(path, f"decoded {len(frames)} of {stop - start} frames from {start} (truncated or corrupt)")
    return np.stack(frames)


def read_indices(
    path: str | os.PathLike,
    indices,
    size: tuple[int, int] | None = None,
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Frames at arbitrary (possibly repeated) indices, decoding only the span they cover."""
    idx = np.asarray(indices, dtype=np.int64)
    lo, hi = int(idx.min()), int(idx.max())
    span = read_frames(path, lo, hi - lo + 1, size=size, info=info)
    return span[idx - lo]


def write_video(
    path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0, codec: str = "mpeg4", bit_rate: int | None = None
) -> None:
    """Write uint8 ``(T, H, W, 3)`` RGB frames as a video (even H and W for yuv420p)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video wants uint8 (T, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # ~1.2 bits per pixel keeps synthetic textures and noise visible after compression.
        stream.bit_rate = bit_rate or int(1.2 * w * h * fps)
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def list_videos(root: str | os.PathLike) -> list[str]:
    """Every video file under ``root`` (recursive), as sorted paths relative to ``root``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: folder not found")
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Symlinked folders are followed once: a folder reached again (a link loop, or two links to
        # one place) is not walked again, so no video is listed twice.
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not hidden(d))
        for name in filenames:
            if name.lower().endswith(VIDEO_EXTENSIONS) and not hidden(name):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def hidden(name: str) -> bool:
    """Names that are not data: dot files and folders (.ipynb_checkpoints, macOS's ._foo.avi
    resource forks) and the __MACOSX folder of zip files made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"
