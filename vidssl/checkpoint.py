"""Checkpoints that never execute code on load: safetensors for tensors, JSON for everything else.

A checkpoint ``NAME`` in a folder is three files:

    NAME.safetensors        model weights ("backbone.*", "task.*")
    NAME.state.safetensors  optimiser tensors and RNG states (for --resume)
    NAME.json               config, backbone name and width, task, step, metrics, optimiser settings

Any later command rebuilds the model from the JSON alone (nanoGPT's model_args).

Saving is a two-phase commit, so that a kill at any moment (or a full disk) leaves either the
previous checkpoint or the new one, never a mix: first ``NAME.new.*`` are written, each atomically
(temporary file, fsync, rename), the JSON last; then they are renamed over ``NAME.*``, the JSON
last. A save killed in the second phase is finished by the next reader (its ``NAME.new.json``
says the new files are complete); one killed in the first is discarded on resume. The JSON and the
weights carry the same commit id, checked on load.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import sync_dir, write_atomic

FORMAT = "vidssl-checkpoint-1"


class CheckpointError(ValueError):
    """A missing, incomplete or mismatched checkpoint; the message names the file."""


def _json_path(path: str) -> str:
    """Accept NAME, NAME.json or NAME.safetensors."""
    for suffix in (".state.safetensors", ".safetensors", ".json"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return path + ".json"


PARTS = (".state.safetensors", ".safetensors", ".json")  # the order of the commit: JSON last


def save(path: str, model: nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None) -> str:
    """Write checkpoint ``path`` (without suffix) by the two-phase commit above; returns the JSON path.

    If a write fails (a full disk), the previous checkpoint is left as it was and a CheckpointError
    says so."""
    try:
        _write_new(path, model, meta, optimizer)
    except OSError as e:
        discard_unfinished(path)
        before = f"the previous {path}.json is intact" if os.path.exists(path + ".json") else "there was none before"
        raise CheckpointError(f"{path}.json: checkpoint not written ({e.strerror or e}); {before}") from None
    finish_save(path)
    return path + ".json"


def finish_save(path: str) -> None:
    """Second phase: rename a complete ``NAME.new.*`` over ``NAME.*`` (also finishes a killed save)."""
    if not os.path.exists(path + ".new.json"):
        return
    for suffix in PARTS:
        try:
            os.replace(path + ".new" + suffix, path + suffix)
        except FileNotFoundError:  # renamed already (by the save this finishes, or another reader)
            pass
    sync_dir(os.path.dirname(path) or ".")


def discard_unfinished(path: str) -> None:
    """Remove ``NAME.new.*`` of a save that never completed its first phase (no ``NAME.new.json``).
    Only for when no save can be running: at resume, or after a failed save."""
    folder, name = os.path.split(path)
    for f in os.listdir(folder or "."):  # temporary files of writes a kill interrupted
        if f.startswith(name + ".") and ".tmp" in f:
            os.remove(os.path.join(folder, f))
    if os.path.exists(path + ".new.json"):
        return
    for suffix in PARTS[:2]:
        if os.path.exists(path + ".new" + suffix):
            os.remove(path + ".new" + suffix)


def _write_new(path: str, model: nn.Module, meta: dict, optimizer) -> None:
    commit = uuid.uuid4().hex
    new = path + ".new"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": FORMAT, "commit": commit}
    write_atomic(new + ".safetensors", lambda f: f.write(safetensors_bytes(weights, metadata=header)))
    state: dict[str, torch.Tensor] = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["rng.cuda"] = torch.cuda.get_rng_state()
    extra = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, entries in sd["state"].items():
            for key, value in entries.items():
                if torch.is_tensor(value):
                    state[f"opt.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    extra.setdefault(str(idx), {})[key] = value
        meta = {**meta, "optimizer": {"param_groups": sd["param_groups"], "scalars": extra}}
    write_atomic(new + ".state.safetensors", lambda f: f.write(safetensors_bytes(state, metadata=header)))
    meta = {"format": FORMAT, "commit": commit, "saved": time.strftime("%Y-%m-%d %H:%M:%S"), **meta}
    write_atomic(new + ".json", lambda f: f.write(json.dumps(meta, indent=1).encode()))


# What the JSON of a checkpoint must hold, checked on every read: a hand-edited or damaged file is
# one line naming the key, never a TypeError deep inside a command.
META_TYPES = (
    ("backbone", str, "a backbone name"),
    ("width", (int, float), "a number"),
    ("step", int, "an integer"),
    ("kind", str, "text"),
    ("task", (str, type(None)), "a task name"),
    ("config", dict, "a mapping of options"),
    ("metrics", dict, "a mapping of numbers"),
)


def read_meta(path: str) -> dict:
    """The JSON of a checkpoint; refuses anything that is not a complete vidssl checkpoint.
    ``torchvision:FILE`` and Hugging Face-style folders are read by vidssl.convert."""
    from .convert import foreign

    if (got := foreign(path)) is not None:
        return got[0]
    jpath = _json_path(path)
    base = jpath[: -len(".json")]
    finish_save(base)  # a save killed half-way through its renames
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: a folder; name a checkpoint in it (e.g. {os.path.join(path, 'best.json')})")
    if not os.path.isfile(jpath):
        if path.endswith((".pt", ".pth", ".ckpt", ".tar", ".pkl")):
            raise CheckpointError(
                f"{path}: pickle-based checkpoints are not loaded (they can run code); vidssl reads its own "
                f"safetensors + JSON checkpoints, and a torchvision state_dict as torchvision:{path} (tensors only)"
            )
        raise CheckpointError(f"{jpath}: checkpoint not found")
    try:
        with open(jpath) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{jpath}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{jpath}: not a vidssl checkpoint (format {got!r})")
    for key, types, words in META_TYPES:
        if key in meta and not isinstance(meta[key], types):
            raise CheckpointError(
                f"{jpath}: {key!r} is {meta.get(key)!r}, not {words}; the file was edited or damaged "
                "(rewrite it from a copy, or retrain)"
            )
    if not os.path.isfile(base + ".safetensors"):
        raise CheckpointError(f"{base}.safetensors: weights missing beside {jpath}")
    return meta


def _commit_of(path: str) -> str | None:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return (f.metadata() or {}).get("commit")


def load_weights(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, weights) of a checkpoint, read with safetensors (no code runs). Checks that the
    weights belong to the JSON (same commit id); a save landing between the two reads is retried."""
    from .convert import foreign

    if (got := foreign(path)) is not None:
        return got
    base = _json_path(path)[: -len(".json")]
    for attempt in range(3):
        meta = read_meta(path)
        try:
            weights, commit = load_file(base + ".safetensors"), _commit_of(base + ".safetensors")
        except Exception as e:  # safetensors raises SafetensorError / OSError on damaged files
            raise CheckpointError(f"{base}.safetensors: unreadable weights ({e})") from None
        if meta.get("commit") in (None, commit):  # None: a checkpoint from before commit ids
            return meta, weights
        time.sleep(0.2 * (attempt + 1))
    raise CheckpointError(f"{base}.safetensors: weights of another save than {base}.json; the checkpoint is mixed up")


def load_training_state(path: str, optimizer: torch.optim.Optimizer | None) -> None:
    """Restore optimiser tensors and RNG states saved with the checkpoint."""
    meta = read_meta(path)
    base = _json_path(path)[: -len(".json")]
    state = load_file(base + ".state.safetensors")
    if meta.get("commit") not in (None, _commit_of(base + ".state.safetensors")):
        raise CheckpointError(f"{base}.state.safetensors: training state of another save than {base}.json")
    torch.set_rng_state(state["rng.cpu"])
    if "rng.cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng.cuda"])
    if optimizer is not None and "optimizer" in meta:
        saved = meta["optimizer"]
        entries: dict[int, dict] = {}
        for key, value in state.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                entries.setdefault(int(idx), {})[name] = value
        for idx, scalars in saved["scalars"].items():
            entries.setdefault(int(idx), {}).update(scalars)
        optimizer.load_state_dict({"state": entries, "param_groups": saved["param_groups"]})


def check_compatible(path: str, meta: dict, expected: dict) -> None:
    """Refuse a checkpoint made for another model: names the file and what differs."""
    diffs = [f"{k} {meta.get(k)!r} (expected {v!r})" for k, v in expected.items() if meta.get(k) != v]
    if diffs:
        raise CheckpointError(f"{_json_path(path)}: checkpoint of another model: " + "; ".join(diffs))


def load_backbone(path: str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's backbone from its file alone, weights loaded strictly."""
    from . import backbones

    meta, weights = load_weights(path)
    if "backbone" not in meta or "width" not in meta:
        raise CheckpointError(f"{_json_path(path)}: names no backbone and width; not a checkpoint of a network")
    if meta["backbone"] not in backbones.names():
        raise CheckpointError(
            f"{_json_path(path)}: unknown backbone {meta['backbone']!r} (known: {', '.join(backbones.names())})"
        )
    model = backbones.build(meta["backbone"], meta["width"])
    sub = {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
    load_strictly(model, sub, f"{_json_path(path)}: weights do not fit {meta['backbone']} x{meta['width']}")
    check_finite(sub, _json_path(path)[: -len(".json")] + ".safetensors")
    return model.to(device), meta


def load_strictly(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with one error that lists what does not fit: missing and
    unexpected keys, and keys whose shapes differ (torch raises those as a RuntimeError)."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or shapes:
        named = (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        parts = [f"{name} {items[:4]}{' ...' * (len(items) > 4)} ({len(items)})" for name, items in named if items]
        raise CheckpointError(f"{where}: " + "; ".join(parts))
    model.load_state_dict(weights)


def check_finite(weights: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or inf: every feature and score made from them would be too."""
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"{where}: {len(bad)} of {len(weights)} tensors hold NaN/inf (e.g. {bad[0]}); the run that wrote it "
            "diverged: use an earlier checkpoint, or train again with a lower --lr"
        )


@dataclass
class EncoderInfo:
    """What a network was trained on, so that an evaluation prepares clips the same way."""

    backbone: str
    width: float
    modality: str = "rgb"
    clip_length: int = 16
    frame_size: tuple[int, int] | None = None
    crop: int = 112
    kind: str = "random"  # pretrain, finetune, or random (not loaded from a file)
    task: str | None = None
    step: int | None = None
    path: str | None = None
    rotations: str | None = None  # the rotation set it was pretrained on (rotation and joint tasks)

    @property
    def frames(self) -> int:
        """Frames a loader reads per clip (DIF needs one more)."""
        from .data.transforms import clip_frames

        return clip_frames(self.clip_length, self.modality)


def load_encoder(path: str, device: str | torch.device = "cpu"):
    """An ``Encoder`` (vidssl.embed): the backbone of any vidssl checkpoint (pretraining or
    fine-tuning), of a model folder or of ``torchvision:FILE``, weights loaded strictly, and how it
    was trained (``.info``: modality, clip length, frame size, crop). ``enc.embed(video)`` gives a
    video's feature; ``backbone, info = load_encoder(path)`` unpacks it."""
    from .convert import PREFIX
    from .embed import Encoder

    backbone, meta = load_backbone(path, device)
    cfg = meta.get("config") or {}
    modality = meta.get("modality") or cfg.get("modality") or "rgb"
    size = meta.get("frame_size") or cfg.get("frame_size")
    rotations = cfg.get("rotations") if meta.get("kind") == "pretrain" and meta.get("task") != "clip_order" else None
    rotations = meta.get("rotations", rotations)  # a model folder's config.json says it
    info = EncoderInfo(
        backbone=meta["backbone"],
        width=meta["width"],
        modality="rgb" if modality == "auto" else modality,
        clip_length=meta.get("clip_length") or cfg.get("clip_length") or 16,
        frame_size=tuple(size) if size else None,
        crop=meta.get("crop") or cfg.get("crop") or 112,
        kind=meta.get("kind", "pretrain"),
        task=meta.get("task"),
        step=meta.get("step"),
        path=PREFIX + os.path.abspath(path[len(PREFIX) :]) if path.startswith(PREFIX) else os.path.abspath(path),
        rotations=rotations,
    )
    return Encoder(backbone, info)


def load_pretext_model(path: str, device: str | torch.device = "cpu"):
    """(PretextModel, its PretrainConfig) rebuilt from a pretraining checkpoint alone (weights
    loaded strictly)."""
    import dataclasses

    from . import backbones
    from .config import PretrainConfig
    from .tasks import PretextModel, build_task

    meta, weights = load_weights(path)
    if meta.get("kind") != "pretrain":
        raise CheckpointError(f"{path}: a {meta.get('kind')!r} checkpoint, not a pretraining one")
    from .fields import from_plain

    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    values = {k: v for k, v in (meta.get("config") or {}).items() if k in known}
    try:
        cfg = from_plain(PretrainConfig, values, _json_path(path))
    except ValueError as e:
        raise CheckpointError(f"{e} (in the checkpoint's config)") from None
    backbone = backbones.build(meta["backbone"], meta["width"])
    model = PretextModel(backbone, build_task(cfg, backbone.num_features))
    load_strictly(model, weights, f"{_json_path(path)}: weights do not fit the model it names")
    check_finite(weights, _json_path(path)[: -len(".json")] + ".safetensors")
    return model.to(device).eval(), cfg
