"""The embedded synthetic dataset: real video files in UCF101's exact layout, made from nothing.

Classes are actions defined by motion, so no single frame tells them apart. The scenes carry what
both pretext tasks need, as real footage does, without a cheap shortcut:

* Up is visible, but only through the actor: upright actors (head on top, feet on the floor, a
  shadow below), gravity in the motions. The background's cues are partial on purpose (a brightness
  gradient of random direction, a ground band in 40% of videos, clouds in 30%): when the background
  always showed which way is up, rotation pretraining learned the background and its features
  transferred worse than random ones (shared/notes/synthetic-feasibility.md, lesson 2).
* Time has an arrow: every motion starts at rest and then accelerates; falls and jumps lose energy
  at each bounce; sways grow. Distractor shapes circle with a period of 24 frames (= the clip-order
  clip of 16 plus its gap of 8), so they carry no order, and they are 90-degree symmetric, so they
  carry no rotation.
* Videos of one group ``gXX`` share the actor's body and colours and the scene's palette, as UCF101
  groups share actor and place; the split files keep groups apart (test groups 1-7 in split 1, 8-14
  in split 2, 15-21 in split 3 for 25 groups, as UCF101).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

import numpy as np

from ..config import SynthConfig
from .video import write_video

# Class name -> what the actor does. CamelCase, as UCF101 names its classes.
CLASSES = {
    "MoveLeft": "walks to the left, starting from rest and speeding up",
    "MoveRight": "walks to the right, starting from rest and speeding up",
    "Jump": "stands, jumps off the floor and lands with smaller and smaller hops",
    "Fall": "hangs near the top, drops under gravity and bounces to rest",
    "Rise": "stands, then floats upwards faster and faster",
    "SpinClockwise": "turns clockwise about its middle, faster and faster",
    "SpinCounterClockwise": "turns counter-clockwise about its middle, faster and faster",
    "Approach": "comes towards the camera (grows, feet move down), speeding up",
    "Recede": "goes away from the camera (shrinks, feet move up), speeding up",
    "Sway": "rocks on its feet from side to side with a growing swing",
}


def split_test_groups(num_groups: int, split: int) -> list[int]:
    """1-based test groups of split 1..3: UCF101's 1-7, 8-14, 15-21, scaled to the group count; split
    4, split 1's validation split: block 2 (8-14), trained on 15-25 (no split-1 test group at all)."""
    block = max(1, round(num_groups * 7 / 25))
    start = (split - 1 if split < 4 else 1) * block  # split 4 tests on block 2
    return [g + 1 for g in range(start, min(start + block, num_groups))]


def split_train_groups(num_groups: int, split: int) -> list[int]:
    """1-based training groups of split 1..4: every group not tested (split 4: nor split 1's test groups)."""
    held = set(split_test_groups(num_groups, split)) | (set(split_test_groups(num_groups, 1)) if split == 4 else set())
    return [g for g in range(1, num_groups + 1) if g not in held]


# ---------------------------------------------------------------------------------------------
# Drawing. Everything is float32 RGB in [0, 255]; y grows downwards as in images.


def _disc(h, w, cy, cx, r):
    y, x = np.ogrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[max(int(y0), 0) : max(int(y1), 0), max(int(x0), 0) : max(int(x1), 0)] = True
    return m


def _actor_sprite(style: int, height: int, colors: np.ndarray, facing: int) -> np.ndarray:
    """An upright, left-right asymmetric actor as RGBA (h, w, 4); feet at the bottom row."""
    h = height
    w = max(8, int(round(h * 0.7)))
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), bool)
    c_head, c_body, c_legs = colors
    mid = w / 2
    nose_x = (mid + facing * 0.28 * w, mid + facing * 0.48 * w)

    def paint(mask, color):
        rgb[mask] = color
        alpha[mask] = True

    if style == 0:  # person: round head, torso, two legs, one arm pointing where it faces
        paint(_rect(h, w, 0.62 * h, h, mid - 0.22 * w, mid - 0.06 * w), c_legs)
        paint(_rect(h, w, 0.62 * h, h, mid + 0.06 * w, mid + 0.22 * w), c_legs)
        paint(_rect(h, w, 0.28 * h, 0.66 * h, mid - 0.25 * w, mid + 0.25 * w), c_body)
        paint(_rect(h, w, 0.34 * h, 0.42 * h, *sorted((mid, mid + facing * 0.5 * w))), c_body * 0.8)
        paint(_disc(h, w, 0.15 * h, mid, 0.14 * h), c_head)
    elif style == 1:  # dress: head over a triangle that widens downwards, small feet
        y, x = np.mgrid[:h, :w]
        half = (y - 0.28 * h) / (0.66 * h) * 0.45 * w
        paint((y >= 0.28 * h) & (y < 0.92 * h) & (np.abs(x - mid) <= half), c_body)
        paint(_rect(h, w, 0.9 * h, h, mid - 0.2 * w, mid - 0.05 * w), c_legs)
        paint(_rect(h, w, 0.9 * h, h, mid + 0.05 * w, mid + 0.2 * w), c_legs)
        paint(_disc(h, w, 0.15 * h, mid, 0.13 * h), c_head)
        paint(_rect(h, w, 0.12 * h, 0.17 * h, *sorted(nose_x)), c_head * 0.7)
    elif style == 2:  # tall: thin body, long legs, big head with a long nose
        paint(_rect(h, w, 0.55 * h, h, mid - 0.14 * w, mid - 0.03 * w), c_legs)
        paint(_rect(h, w, 0.55 * h, h, mid + 0.03 * w, mid + 0.14 * w), c_legs)
        paint(_rect(h, w, 0.3 * h, 0.58 * h, mid - 0.16 * w, mid + 0.16 * w), c_body)
        paint(_disc(h, w, 0.16 * h, mid, 0.16 * h), c_head)
        paint(_rect(h, w, 0.13 * h, 0.2 * h, *sorted((mid, mid + facing * 0.5 * w))), c_head * 0.75)
    else:  # robot: antenna, square head with one eye on its facing side, box body, two wheels
        paint(_rect(h, w, 0.0, 0.1 * h, mid - 0.03 * w, mid + 0.03 * w), c_legs)
        paint(_rect(h, w, 0.08 * h, 0.3 * h, mid - 0.2 * w, mid + 0.2 * w), c_head)
        paint(_disc(h, w, 0.18 * h, mid + facing * 0.1 * w, 0.04 * h), c_body * 0.4)
        paint(_rect(h, w, 0.32 * h, 0.8 * h, mid - 0.3 * w, mid + 0.3 * w), c_body)
        paint(_disc(h, w, 0.88 * h, mid - 0.17 * w, 0.11 * h), c_legs)
        paint(_disc(h, w, 0.88 * h, mid + 0.17 * w, 0.11 * h), c_legs)
    return np.dstack([rgb, alpha.astype(np.float32)])


def _transform_sprite(sprite: np.ndarray, scale: float, angle: float, pivot_v: float):
    """Scale and rotate (radians, clockwise on screen) an RGBA sprite about the point at relative
    height ``pivot_v`` on its centre line, by nearest-neighbour inverse mapping.

    Returns the new sprite and where the pivot lies in it (row, column)."""
    h, w = sprite.shape[:2]
    r = int(math.ceil(math.hypot(h, w) * scale)) + 2
    size = 2 * r + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    # inverse rotation then inverse scale, back into sprite coordinates around the pivot
    u = (c * xx + s * yy) / scale + w / 2
    v = (-s * xx + c * yy) / scale + pivot_v * h
    ui, vi = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    out = np.zeros((size, size, 4), np.float32)
    out[inside] = sprite[vi[inside], ui[inside]]
    return out, float(r), float(r)


def _paste(frame: np.ndarray, sprite: np.ndarray, top: float, left: float) -> None:
    """Alpha-composite an RGBA sprite onto ``frame`` in place, clipped at the borders."""
    H, W = frame.shape[:2]
    h, w = sprite.shape[:2]
    t, lf = int(round(top)), int(round(left))
    y0, y1, x0, x1 = max(t, 0), min(t + h, H), max(lf, 0), min(lf + w, W)
    if y0 >= y1 or x0 >= x1:
        return
    sp = sprite[y0 - t : y1 - t, x0 - lf : x1 - lf]
    a = sp[..., 3:4]
    region = frame[y0:y1, x0:x1]
    region *= 1 - a
    region += a * sp[..., :3]


def _smooth_noise(rng, h, w, cells=(4, 5)) -> np.ndarray:
    """Low-frequency blotches in [-1, 1]: a coarse random grid, bilinearly upsampled."""
    g = rng.uniform(-1, 1, (cells[0] + 1, cells[1] + 1)).astype(np.float32)
    ys = np.linspace(0, cells[0], h, dtype=np.float32)
    xs = np.linspace(0, cells[1], w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells[0] - 1)
    x0 = np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return (a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx).astype(np.float32)


def _palette(rng) -> np.ndarray:
    return rng.uniform(30, 230, 3).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Motions: per class, the actor's (x, feet y, scale, angle, pivot) at every frame.


def _motion(name: str, T: int, H: int, W: int, ground: float, size: float, rng, speeds: str = "accelerate"):
    t = np.arange(T, dtype=np.float32)
    onset = rng.uniform(0.08, 0.3) * T  # at rest before the onset; the arrow of time starts here
    tau = np.clip(t - onset, 0, None)
    span = T - onset
    # "mixed": half the videos run the other way in speed: off at full speed, slowing to rest (as a
    # slide under friction does), so how much moves says nothing of when; sways then die down.
    slowing = speeds == "mixed" and rng.random() < 0.5
    ramp = lambda u: 1 - (1 - u) ** 2 if slowing else u**2  # from 0 to 1 over the motion
    x = np.full(T, rng.uniform(0.3, 0.7) * W, np.float32)
    y = np.full(T, ground, np.float32)
    scale = np.ones(T, np.float32)
    angle = np.zeros(T, np.float32)
    pivot = 1.0  # rotate about the feet by default
    if name in ("MoveLeft", "MoveRight"):
        d = -1 if name == "MoveLeft" else 1
        x[:] = (0.5 - d * rng.uniform(0.25, 0.35)) * W
        dist = rng.uniform(0.5, 0.65) * W
        x += d * dist * ramp(tau / span)
    elif name == "Jump":
        g = 2 * rng.uniform(0.9, 1.3) * size / (0.2 * span) ** 2  # first hop ~1 body high
        v, h, vel = [], 0.0, math.sqrt(2 * g * size * rng.uniform(0.9, 1.3))
        hv = vel
        for k in range(T):
            if t[k] < onset:
                v.append(0.0)
                continue
            h += hv - g / 2
            hv -= g
            if h <= 0:
                h, hv = 0.0, (vel := vel * 0.55)  # each landing loses energy
            v.append(h)
        y -= np.asarray(v, np.float32)
    elif name == "Fall":
        top = rng.uniform(0.03, 0.12) * H + size  # feet when hanging near the top
        drop = ground - top
        g = 2 * drop / (0.35 * span) ** 2
        h, hv, pos = drop, 0.0, []
        for k in range(T):
            if t[k] >= onset:
                hv -= g
                h += hv
                if h <= 0:
                    h, hv = 0.0, -hv * 0.5
            pos.append(h)
        y = ground - np.asarray(pos, np.float32)
    elif name == "Rise":
        y -= rng.uniform(0.55, 0.75) * H * ramp(tau / span)
    elif name in ("SpinClockwise", "SpinCounterClockwise"):
        d = 1 if name == "SpinClockwise" else -1
        pivot = 0.5
        y -= 0.5 * size  # spin about the middle: keep the body where it stood
        angle = d * rng.uniform(2.5, 4.0) * math.pi * ramp(tau / span)
    elif name in ("Approach", "Recede"):
        s0, s1 = (0.55, 1.45) if name == "Approach" else (1.45, 0.55)
        scale = s0 + (s1 - s0) * ramp(tau / span)
        y = ground - 0.12 * H + 0.2 * H * (scale - 0.55) / 0.9  # nearer means lower in the frame
    elif name == "Sway":
        period = rng.uniform(14, 22)
        amp = np.radians(rng.uniform(25, 40)) * ((1 - tau / span) * (tau > 0) if slowing else tau / span)
        angle = amp * np.sin(2 * np.pi * tau / period)
    else:
        raise ValueError(f"unknown class {name!r}")
    return x, y, scale, angle, pivot


# ---------------------------------------------------------------------------------------------


def _group_look(seed: int, group: int):
    """What a group shares: actor body style, size and colours; the scene's palette."""
    rng = np.random.default_rng([seed, group, 7])
    return {
        "style": int(rng.integers(4)),
        "size": float(rng.uniform(0.3, 0.4)),
        "colors": np.stack([_palette(rng) for _ in range(3)]),
        "sky": _palette(rng),
        "ground": _palette(rng),
        "distractor": _palette(rng),
    }


def render_video(cfg: SynthConfig, cls: int, group: int, clip: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of one video (deterministic for its (seed, class, group, clip))."""
    H, W, T = cfg.height, cfg.width, cfg.frames
    look = _group_look(cfg.seed, group)
    rng = np.random.default_rng([cfg.seed, group, cls, clip])
    name = list(CLASSES)[cls]

    # Background: sky with a gradient in a random direction (no "bright top" cue) and blotches.
    sky = look["sky"] + rng.normal(0, 12, 3).astype(np.float32)
    ramp = np.linspace(-1, 1, H if rng.random() < 0.5 else W, dtype=np.float32) * rng.choice([-1, 1])
    ramp = ramp[:, None] if len(ramp) == H else ramp[None, :]
    bg = sky + (rng.uniform(15, 45) * ramp)[..., None] + rng.uniform(10, 30) * _smooth_noise(rng, H, W)[..., None]
    bg = np.broadcast_to(bg, (H, W, 3)).astype(np.float32).copy()
    ground_y = H * rng.uniform(0.8, 0.9)
    if rng.random() < 0.4:  # a textured ground band in some videos only
        gy = int(ground_y)
        stripes = rng.normal(0, 10, (1, W, 1)).astype(np.float32)
        bg[gy:] = look["ground"] + stripes + rng.normal(0, 6, (H - gy, W, 1)).astype(np.float32)
    clouds = []
    if rng.random() < 0.3:
        for _ in range(rng.integers(1, 4)):
            clouds.append(
                (
                    rng.uniform(0.05, 0.35) * H,
                    rng.uniform(0, W),
                    rng.uniform(0.1, 0.2) * W,
                    rng.uniform(0.04, 0.07) * H,
                    rng.uniform(-0.3, 0.3),
                )
            )
    # Distractors: 90-degree-symmetric shapes circling with a period that divides 24 frames.
    distractors = []
    for _ in range(rng.integers(1, 4)):
        r = rng.uniform(0.04, 0.07) * H
        shape = np.zeros((int(2 * r) + 1,) * 2 + (4,), np.float32)
        m = _disc(*shape.shape[:2], r, r, r) if rng.random() < 0.5 else np.ones(shape.shape[:2], bool)
        shape[m] = [*(look["distractor"] + rng.normal(0, 30, 3)).clip(0, 255), 1.0]
        distractors.append(
            (
                shape,
                rng.uniform(0.2, 0.8) * H,
                rng.uniform(0.15, 0.85) * W,
                rng.uniform(0.05, 0.15) * H,
                rng.choice([8, 12, 24]) * rng.choice([-1, 1]),
                rng.uniform(0, 2 * np.pi),
            )
        )

    size = look["size"] * H * rng.uniform(0.9, 1.1)
    colors = (look["colors"] + rng.normal(0, 10, (3, 3))).clip(0, 255).astype(np.float32)
    facing = 1 if name == "MoveRight" else -1 if name == "MoveLeft" else int(rng.choice([-1, 1]))
    sprite = _actor_sprite(look["style"], int(round(size)), colors, facing)
    xs, ys, scales, angles, pivot = _motion(name, T, H, W, ground_y, size, rng, cfg.speeds)

    noise_bank = rng.normal(0, rng.uniform(3, 7), (8, H, W, 1)).astype(np.float32)
    frames = np.empty((T, H, W, 3), np.uint8)
    for k in range(T):
        f = bg.copy()
        for cy, cx, rx, ry, v in clouds:
            cxk = (cx + v * k) % (W + 2 * rx) - rx
            yy, xx = np.ogrid[:H, :W]
            f[((yy - cy) / ry) ** 2 + ((xx - cxk) / rx) ** 2 <= 1] = 235
        for shape, cy, cx, rad, period, phase in distractors:
            a = phase + 2 * np.pi * k / period
            _paste(f, shape, cy + rad * math.sin(a) - shape.shape[0] / 2, cx + rad * math.cos(a) - shape.shape[1] / 2)
        # Shadow on the floor under the actor: smaller and fainter the higher the actor is.
        lift = max(0.0, ground_y - ys[k])
        shadow_w = max(2.0, 0.35 * size * scales[k] * (1 - min(lift / H, 0.8)))
        yy, xx = np.ogrid[:H, :W]
        shadow = ((yy - ground_y) / 2.0) ** 2 + ((xx - xs[k]) / shadow_w) ** 2 <= 1
        f[shadow] *= 0.6
        spr, pr, pc = _transform_sprite(sprite, float(scales[k]), float(angles[k]), pivot)
        _paste(f, spr, ys[k] - (1 - pivot) * size * scales[k] - pr, xs[k] - pc)
        f *= rng.uniform(0.97, 1.03)  # flicker
        f += noise_bank[rng.integers(8)]
        frames[k] = f.clip(0, 255)
    return frames


def video_name(cls: int, group: int, clip: int) -> str:
    name = list(CLASSES)[cls]
    return f"{name}/v_{name}_g{group + 1:02d}_c{clip + 1:02d}.avi"


def _write_one(args) -> str:
    cfg, out, cls, group, clip = args
    rel = video_name(cls, group, clip)
    path = os.path.join(out, "UCF-101", rel)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.avi"
        write_video(tmp, render_video(cfg, cls, group, clip), fps=cfg.fps)
        os.replace(tmp, path)
    return rel


def write_splits(out: str, cfg: SynthConfig) -> None:
    """ucfTrainTestlist/ in UCF101's exact format (classInd 1-based; trainlist with labels)."""
    d = os.path.join(out, "ucfTrainTestlist")
    os.makedirs(d, exist_ok=True)
    names = list(CLASSES)[: cfg.classes]
    with open(os.path.join(d, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {n}\n" for i, n in enumerate(names))
    for split in (1, 2, 3, 4):  # 4: split 1's validation split (split_test_groups), UCF101 has no such file
        test = set(g - 1 for g in split_test_groups(cfg.groups, split))
        train = set(g - 1 for g in split_train_groups(cfg.groups, split))
        train_lines, test_lines = [], []
        for c in range(cfg.classes):
            for g in sorted(test | train):
                for k in range(cfg.clips):
                    rel = video_name(c, g, k)
                    (test_lines.append(f"{rel}\n") if g in test else train_lines.append(f"{rel} {c + 1}\n"))
        with open(os.path.join(d, f"trainlist0{split}.txt"), "w") as f:
            f.writelines(train_lines)
        with open(os.path.join(d, f"testlist0{split}.txt"), "w") as f:
            f.writelines(test_lines)


def generate(out: str, cfg: SynthConfig | None = None, workers: int | None = None, progress: bool = True) -> str:
    """Write the dataset to ``out`` (``out/UCF-101``, ``out/ucfTrainTestlist``); existing videos are kept.

    Returns ``out``. Refuses to mix with a dataset generated with other settings."""
    from multiprocessing import get_context

    from tqdm import tqdm

    cfg = cfg or SynthConfig()
    if not 1 <= cfg.classes <= len(CLASSES):
        raise ValueError(f"classes must be 1..{len(CLASSES)}, not {cfg.classes}")
    if cfg.groups < 3 or cfg.clips < 1 or cfg.frames < 2:
        raise ValueError("synth needs at least 3 groups (one test block per split), 1 clip and 2 frames")
    if cfg.height % 2 or cfg.width % 2 or cfg.height < 32 or cfg.width < 32:
        raise ValueError(f"frame size must be even and at least 32x32, not {cfg.height}x{cfg.width}")
    meta_path = os.path.join(out, "synth.json")
    meta = {"config": asdict(cfg), "classes": {n: CLASSES[n] for n in list(CLASSES)[: cfg.classes]}}
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = {**asdict(SynthConfig()), **json.load(f)["config"]}  # options added since take their defaults
        if old != asdict(cfg):
            raise ValueError(f"{out} holds a synthetic dataset made with {old}; choose another folder")
    elif os.path.isdir(out) and os.listdir(out):  # e.g. a real dataset: its split files would be replaced
        raise ValueError(f"{out} holds other files (no synth.json: not a synthetic dataset); choose an empty folder")
    os.makedirs(out, exist_ok=True)
    with open(meta_path, "w") as f:  # first: a killed run is continued by the next (its videos are whole)
        json.dump(meta, f, indent=1)
    jobs = [(cfg, out, c, g, k) for c in range(cfg.classes) for g in range(cfg.groups) for k in range(cfg.clips)]
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="synth videos", unit="video", disable=not progress)
    if workers == 1:
        for job in jobs:
            _write_one(job)
            bar.update()
    else:
        with get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=4):
                bar.update()
    bar.close()
    write_splits(out, cfg)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    return out
