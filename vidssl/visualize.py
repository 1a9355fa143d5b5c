"""`vidssl visualize`: the pictures people look at instead of reading numbers (PNG, matplotlib).

- attention: for sampled frames of a clip, the first conv block's activations averaged over channels,
  upsampled and laid over the frames as a heat map; one row per rotation (3DRotNet Fig. 1/3).
- kernels: every first-layer kernel as RGB tiles, one per temporal slice, each kernel normalised on
  its own, in a grid; optionally beside a second checkpoint's (3DRotNet Fig. 5).
- retrieval: each query's middle frame and its nearest neighbours', class names in green for a hit,
  red for a miss (VCOP Fig. 4/6), from a `vidssl retrieve` output folder.
- curves: loss and accuracy, training and validation, from a run's log.csv.
"""

from __future__ import annotations

import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .config import VisualizeConfig  # noqa: E402
from .data.transforms import KINETICS_MEAN, KINETICS_STD, clip_frames, frame_difference, normalize  # noqa: E402
from .data.video import probe, read_frames  # noqa: E402
from .tasks.rotation import ROTATION_SETS, rotate  # noqa: E402


@torch.no_grad()
def attention(backbone: torch.nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """``(T, H, W)`` map in [0, 1]: the mean over channels of the first block's activations for a float
    clip ``(C, T, H, W)``, upsampled to the clip's size (3DRotNet 4.4)."""
    backbone.eval()
    device = next(backbone.parameters()).device
    act = backbone.conv1(clip[None].float().to(device))[0].mean(0).cpu()  # (T', H', W')
    up = F.interpolate(act[None, None], size=clip.shape[1:], mode="trilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return up / up.max().clamp_min(1e-8)


def _to_image(frame: torch.Tensor) -> np.ndarray:
    """A normalised frame ``(C, H, W)`` back to RGB in [0, 1]."""
    mean = torch.tensor(KINETICS_MEAN).view(3, 1, 1)
    std = torch.tensor(KINETICS_STD).view(3, 1, 1)
    return (frame.float() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def attention_angles(enc) -> tuple[float, ...]:
    """The rotations to draw for a network: the set it was trained on (the 360-degree regression:
    the four right angles as examples); only the clip itself for a network not trained on rotations."""
    if enc.rotations is None:
        return (0,)
    return ROTATION_SETS[enc.rotations] or (0, 90, 180, 270)


def attention_figure(
    backbone,
    clip_uint8: torch.Tensor,
    path: str,
    angles=(0, 90, 180, 270),
    columns: int = 4,
    title: str = "",
    modality: str = "rgb",
) -> str:
    """Rows: rotations of the clip; columns: frames; each frame with its attention map over it.
    A DIF network sees frame differences (T+1 frames give T); the frames drawn are the later of each pair."""
    x = normalize(clip_uint8)
    inputs, shown = (frame_difference(x), x[:, 1:]) if modality == "dif" else (x, x)
    t = inputs.shape[1]
    frames = np.linspace(0, t - 1, columns).round().astype(int)
    fig, axes = plt.subplots(len(angles), columns, figsize=(2 * columns, 2 * len(angles)), squeeze=False)
    for r, angle in enumerate(angles):
        xr = rotate(shown, angle)
        att = attention(backbone, rotate(inputs, angle))
        for c, f in enumerate(frames):
            ax = axes[r, c]
            ax.imshow(_to_image(xr[:, f]))
            ax.imshow(att[f].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{angle}°")
            if r == 0:
                ax.set_title(f"frame {f}", fontsize=9)
    fig.suptitle(title or "attention of the first conv block", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def kernel_tiles(weight: torch.Tensor, pad: int = 1) -> np.ndarray:
    """An RGB image of conv1 kernels ``(O, 3, t, k, k)``: one row of t slices per kernel, each kernel
    normalised to [0, 1] on its own, kernels in a near-square grid."""
    w = weight.detach().float().cpu()
    o, _, t, kh, kw = w.shape
    lo = w.flatten(1).min(1).values.view(o, 1, 1, 1, 1)
    hi = w.flatten(1).max(1).values.view(o, 1, 1, 1, 1)
    w = (w - lo) / (hi - lo).clamp_min(1e-8)
    cols = int(np.ceil(np.sqrt(o)))
    rows = int(np.ceil(o / cols))
    tile_w, tile_h = t * (kw + pad) + pad * 2, kh + 2 * pad
    img = np.ones((rows * tile_h, cols * tile_w, 3))
    for i in range(o):
        r, c = divmod(i, cols)
        for s in range(t):
            y0, x0 = r * tile_h + pad, c * tile_w + pad + s * (kw + pad)
            img[y0 : y0 + kh, x0 : x0 + kw] = w[i, :, s].permute(1, 2, 0).numpy()
    return img


def kernels_figure(weights: list[tuple[str, torch.Tensor]], path: str) -> str:
    fig, axes = plt.subplots(1, len(weights), figsize=(7 * len(weights), 7), squeeze=False)
    for ax, (name, w) in zip(axes[0], weights):
        ax.imshow(kernel_tiles(w), interpolation="nearest")
        ax.set_title(f"{name}: {w.shape[0]} kernels {tuple(w.shape[2:])}, temporal slices left to right", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def middle_frame(path: str) -> np.ndarray:
    info = probe(path)
    return read_frames(path, info.num_frames // 2, 1, info=info)[0]


def retrieval_figure(rows: list[dict], path: str, title: str = "") -> str:
    """``rows``: {"query": (image, class), "neighbours": [(image, class), ...]}."""
    k = max(len(r["neighbours"]) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.8 * (k + 1), 1.9 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        img, cls = row["query"]
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(f"query: {cls}", fontsize=8, fontweight="bold")
        for j, (nimg, ncls) in enumerate(row["neighbours"]):
            axes[i, j + 1].imshow(nimg)
            axes[i, j + 1].set_title(f"{j + 1}: {ncls}", fontsize=8, color="green" if ncls == cls else "red")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title or "nearest neighbours (green: same class)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def retrieval_samples(retrieve_out: str, path: str, queries: int = 6, seed: int = 0, title: str = "") -> str:
    """Pictures for the neighbours a `vidssl retrieve` run wrote (neighbours.csv, results.json)."""
    from .data.datasets import video_root

    with open(os.path.join(retrieve_out, "results.json")) as f:
        cfg = json.load(f)["config"]
    qroot = video_root(cfg["dataset"], cfg["kind"])
    groot = video_root(cfg["gallery"] or cfg["dataset"], "auto")
    by_query: dict[str, list] = {}
    with open(os.path.join(retrieve_out, "neighbours.csv"), newline="") as f:
        for r in csv.DictReader(f):
            by_query.setdefault((r["query"], r["query_class"]), []).append((r["neighbour"], r["neighbour_class"]))
    keys = list(by_query)
    pick = np.random.default_rng(seed).choice(len(keys), size=min(queries, len(keys)), replace=False)
    rows = []
    for i in sorted(pick):
        (q, qc) = keys[i]
        rows.append(
            {
                "query": (middle_frame(os.path.join(qroot, q)), qc),
                "neighbours": [(middle_frame(os.path.join(groot, n)), nc) for n, nc in by_query[keys[i]]],
            }
        )
    return retrieval_figure(rows, path, title)


def curves_figure(log_csv: str, path: str, title: str = "") -> str:
    """Loss and accuracy against step, training and validation, from a log.csv."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with open(log_csv, newline="") as f:
        for r in csv.DictReader(f):
            for key in ("loss", "acc"):
                if r.get(key):
                    series.setdefault((r["split"], key), []).append((float(r["step"]), float(r[key])))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            pts = series.get((split, key))
            if pts:
                ax.plot(*zip(*pts), label=split, marker="o" if split == "val" else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title or os.path.dirname(log_csv), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_label(path: str) -> str:
    """A checkpoint named by its run: ``runs/pt-rot/checkpoints/best.json`` -> ``pt-rot (best)``
    (two panels of "best.json" say nothing); a model folder or a torchvision file by its name."""
    parts = os.path.abspath(path.split(":", 1)[-1]).split(os.sep)
    name = parts[-1].removesuffix(".json").removesuffix(".safetensors")
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        run = parts[-3] if not parts[-3].startswith("seed") or len(parts) < 4 else f"{parts[-4]}/{parts[-3]}"
        return f"{run} ({name})"
    return name


def visualize(cfg: VisualizeConfig) -> str:
    """Draw one picture; returns the PNG path."""
    from .checkpoint import load_encoder
    from .runtime import Runtime

    rt = Runtime.setup(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.what == "curves":
        log_csv = cfg.source if cfg.source.endswith(".csv") else os.path.join(cfg.source, "log.csv")
        if not os.path.isfile(log_csv):
            raise FileNotFoundError(f"{log_csv}: no training log; pass a pretrain/finetune --out folder")
        return curves_figure(log_csv, os.path.join(cfg.out, "curves.png"))
    if cfg.what == "retrieval":
        return retrieval_samples(cfg.source, os.path.join(cfg.out, "retrieval.png"), cfg.queries)
    backbone, enc = load_encoder(cfg.source)
    if cfg.what == "kernels":
        weights = [(run_label(cfg.source), backbone.first_conv.weight)]
        if cfg.compare:
            weights.append((run_label(cfg.compare), load_encoder(cfg.compare).backbone.first_conv.weight))
        return kernels_figure(weights, os.path.join(cfg.out, "kernels.png"))
    video = cfg.video
    if video is None:
        if cfg.dataset is None:
            raise ValueError("attention needs --video or --dataset")
        from .data.video import list_videos

        video = os.path.join(cfg.dataset, list_videos(cfg.dataset)[0])
    info = probe(video)
    n = min(clip_frames(cfg.clip_length, enc.modality), info.num_frames)
    frames = read_frames(video, max(0, (info.num_frames - n) // 2), n, size=cfg.frame_size, info=info)
    clip = torch.from_numpy(frames).permute(3, 0, 1, 2)
    rt.announce()
    return attention_figure(
        backbone.to(rt.device),
        clip,
        os.path.join(cfg.out, "attention.png"),
        angles=attention_angles(enc),
        title=f"{os.path.basename(video)}: attention of {enc.backbone} conv1 ({enc.task}, {enc.modality})",
        modality=enc.modality,
    )
