"""Features of videos from a trained network, in a few lines, and `vidssl embed` for many videos.

    enc = vidssl.load_encoder("runs/pt/checkpoints/best")   # or torchvision:FILE, or a model folder
    feats = enc.embed("video.mp4")                          # (D,): the mean over 10 clips

Clips are prepared as the network was trained (frame size, crop, clip length, RGB or frame
differences; ``enc.info``) and as the evaluations read them (K evenly spaced centre crops, short
videos looped), so ``embed`` gives the features retrieval and the probes see.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from tqdm import tqdm

from .atomic import write_atomic
from .backbones import check_feature, clip_feature
from .checkpoint import EncoderInfo
from .data.sampling import UniformClips
from .data.transforms import center_crop, to_input
from .data.video import VIDEO_EXTENSIONS, VideoError, list_videos, probe, read_indices
from .features import VCOP_FRAMES  # frames of a network whose checkpoint names no size, as the evaluations use

log = logging.getLogger("vidssl")


class Encoder(nn.Module):
    """A backbone and how it was trained. ``enc(clips)``: pooled features of prepared clips;
    ``enc.embed(video)``: a video's feature. Unpacks as ``backbone, info = load_encoder(path)``."""

    def __init__(self, backbone: nn.Module, info: EncoderInfo):
        super().__init__()
        self.backbone, self.info = backbone, info

    def __iter__(self):  # vidssl 0.1's load_encoder returned (backbone, info): code that unpacks it still runs
        return iter((self.backbone, self.info))

    def __getitem__(self, i: int):
        return (self.backbone, self.info)[i]

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.backbone(clips)

    def clips(self, video: str, clips: int = 10) -> torch.Tensor:
        """uint8 ``(K, 3, frames, crop, crop)`` clips of ``video``, K evenly spaced."""
        info = self.info
        size = tuple(info.frame_size or VCOP_FRAMES)
        meta = probe(video)
        sampler = UniformClips(clips, info.frames)
        idx = sampler(max(meta.num_frames, sampler.min_frames)) % meta.num_frames  # short videos loop
        frames = torch.from_numpy(read_indices(video, idx.reshape(-1), size=size, info=meta))
        x = center_crop(frames.permute(3, 0, 1, 2), (info.crop, info.crop))  # (3, K*T, crop, crop)
        return x.reshape(3, clips, info.frames, info.crop, info.crop).transpose(0, 1).contiguous()

    @torch.no_grad()
    def embed(self, video: str, clips: int = 10, feature: str = "pooled", per_clip: bool = False) -> torch.Tensor:
        """``(D,)`` float32: the mean feature of ``clips`` clips of ``video`` (``per_clip``: ``(K, D)``).
        ``feature="vcop"``: conv5 max-pooled (1,2,2) and flattened (VCOP's retrieval feature);
        ``"conv2"`` .. ``"conv4"``: that block's output, global-average-pooled."""
        check_feature(feature)
        device = next(self.backbone.parameters()).device
        self.backbone.eval()
        x = to_input(self.clips(video, clips).to(device), self.info.modality)
        if self.backbone.first_conv.weight.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)  # a model prepared for channels_last
        f = clip_feature(self.backbone, x, feature).float().cpu()
        return f if per_clip else f.mean(0)


def find_videos(paths) -> list[str]:
    """Video files named directly, and every video under named folders (sorted), in that order."""
    if not paths:
        raise FileNotFoundError("no videos named: give video files or folders after the checkpoint")
    found: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found += [os.path.join(p, rel) for rel in list_videos(p)]
        elif os.path.isfile(p):
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such video file or folder")
    if not found:
        raise FileNotFoundError(f"{', '.join(paths)}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return found


def read_embeddings(path: str) -> tuple[torch.Tensor, list[str], dict]:
    """(features, the videos they belong to (row order), what made them) of a `vidssl embed` file."""
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("vidssl", "{}"))
    return load_file(path)["features"], meta.get("videos", []), meta


def _part(folder: str, rank: int, i: int) -> str:
    return os.path.join(folder, f"rank{rank}-{i:06d}.safetensors")


def embed_videos(cfg) -> dict:
    """`vidssl embed`: one feature per video (EmbedConfig). Partial results are saved every
    ``save_every`` videos in OUT.parts/, so a killed run continues where it stopped (when every
    setting and the video list are the same); under torchrun each rank embeds every world-th video
    and rank 0 writes OUT in the videos' order. Videos that fail to decode are skipped, named and counted."""
    from .checkpoint import load_encoder
    from .features import weights_digest
    from .runtime import Runtime

    if os.path.exists(cfg.out) and not cfg.overwrite:
        raise FileExistsError(f"{cfg.out}: already exists; name another --out, or --overwrite to replace it")
    videos = find_videos(cfg.videos)
    rt = Runtime.setup(cfg)
    enc = load_encoder(cfg.checkpoint, rt.device)
    enc.backbone = rt.prepare(enc.backbone)  # on the device, in channels_last_3d where asked
    if cfg.clip_length:
        enc.info = dataclasses.replace(enc.info, clip_length=cfg.clip_length)
    settings = {
        "checkpoint": enc.info.path,
        "weights": weights_digest(enc.backbone),
        "clips": cfg.clips,
        "feature": cfg.feature,
        "per_clip": cfg.per_clip,
        "modality": enc.info.modality,
        "clip_length": enc.info.clip_length,
        "frame_size": list(enc.info.frame_size or VCOP_FRAMES),
        "crop": enc.info.crop,
        "world": rt.world,
        "videos": [os.path.abspath(v) for v in videos],
    }
    parts = cfg.out + ".parts"
    if rt.main:  # one process makes or checks OUT.parts/, the others wait for it
        _open_parts(parts, settings, cfg.overwrite)
    rt.barrier()
    mine = rt.shard(len(videos))
    done: dict[int, torch.Tensor] = {}
    failed: list[tuple[int, str]] = []
    chunk = 0
    while os.path.isfile(_part(parts, rt.rank, chunk)):  # what an earlier run of these settings finished
        feats, names, meta = read_embeddings(_part(parts, rt.rank, chunk))
        done.update(zip(meta["rows"], feats))
        failed += [tuple(f) for f in meta["failed"]]
        chunk += 1
    given_up = {i for i, _ in failed}
    todo = [i for i in mine if i not in done and i not in given_up]
    new, new_failed = {}, []
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="embedding", disable=not (cfg.progress and rt.main))
    for n, i in enumerate(todo, 1):
        try:
            with rt.autocast():
                new[i] = enc.embed(videos[i], cfg.clips, cfg.feature, cfg.per_clip)
        except (VideoError, ValueError) as e:
            why = str(e) if videos[i] in str(e) else f"{videos[i]}: {e}"  # a VideoError names the file
            log.warning("skipping %s", why[:300])
            new_failed.append((i, str(e)[:200]))
        bar.update()
        if n % cfg.save_every == 0 or n == len(todo):
            _save_part(_part(parts, rt.rank, chunk), new, new_failed)
            done.update(new)
            failed += new_failed
            new, new_failed, chunk = {}, [], chunk + 1
    bar.close()
    pieces = rt.gather((list(done), [done[i] for i in done], failed))
    if not rt.main:
        return {}
    rows = sorted(i for p in pieces for i in p[0])
    by_row = {i: f for p in pieces for i, f in zip(p[0], p[1])}
    skipped = sorted((i, why) for p in pieces for i, why in p[2])
    if not rows:
        raise ValueError(f"{', '.join(cfg.videos)}: no video could be decoded")
    feats = torch.stack([by_row[i] for i in rows])
    meta = {**settings, "videos": [videos[i] for i in rows], "failed": [[videos[i], why] for i, why in skipped]}
    blob = save({"features": feats.contiguous()}, metadata={"vidssl": json.dumps(meta)})
    write_atomic(cfg.out, lambda f: f.write(blob))
    shutil.rmtree(parts, ignore_errors=True)
    if skipped:
        log.warning("skipped %d of %d videos that could not be read (named above; listed in the file's 'failed')",
                    len(skipped), len(videos))  # fmt: skip
    return {"out": cfg.out, "videos": len(rows), "skipped": len(skipped), "shape": list(feats.shape)}


def _open_parts(parts: str, settings: dict, restart: bool) -> None:
    """OUT.parts/ for these settings: made, or kept when an earlier run had the same settings."""
    path = os.path.join(parts, "settings.json")
    if os.path.isfile(path) and not restart:
        with open(path) as f:
            have = json.load(f)
        if have != settings:
            differ = sorted(k for k in settings if have.get(k) != settings[k])
            raise FileExistsError(f"{parts}: partial embeddings of other settings ({', '.join(differ)} differ); "
                                  "--overwrite starts again")  # fmt: skip
        return
    if restart or os.path.isdir(parts):
        shutil.rmtree(parts, ignore_errors=True)
    os.makedirs(parts, exist_ok=True)
    write_atomic(path, lambda f: f.write(json.dumps(settings).encode()))


def _save_part(path: str, new: dict[int, torch.Tensor], failed: list) -> None:
    rows = list(new)
    feats = torch.stack([new[i] for i in rows]) if rows else torch.zeros(0)
    meta = {"rows": rows, "failed": failed}
    blob = save({"features": feats.contiguous()}, metadata={"vidssl": json.dumps(meta)})
    write_atomic(path, lambda f: f.write(blob))
