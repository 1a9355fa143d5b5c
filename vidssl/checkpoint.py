"""Checkpoints that never execute code on load: safetensors for tensors, JSON for everything else.

A checkpoint ``NAME`` in a folder is three files, written in this order, each atomically
(temporary file, fsync, rename), the JSON last so that its presence means the others are complete:

    NAME.safetensors        model weights ("backbone.*", "task.*")
    NAME.state.safetensors  optimiser tensors and RNG states (for --resume)
    NAME.json               config, backbone name and width, task, step, metrics, optimiser settings

Any later command rebuilds the model from the JSON alone (nanoGPT's model_args).
"""

from __future__ import annotations

import json
import os
import time

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import write_atomic

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


def save(path: str, model: nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None = None) -> str:
    """Write checkpoint ``path`` (without suffix); returns the JSON path."""
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path + ".safetensors", lambda f: f.write(safetensors_bytes(weights, metadata={"format": FORMAT})))
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
    write_atomic(path + ".state.safetensors", lambda f: f.write(safetensors_bytes(state)))
    meta = {"format": FORMAT, "saved": time.strftime("%Y-%m-%d %H:%M:%S"), **meta}
    write_atomic(path + ".json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return path + ".json"


def read_meta(path: str) -> dict:
    """The JSON of a checkpoint; refuses anything that is not a complete vidssl checkpoint."""
    jpath = _json_path(path)
    base = jpath[: -len(".json")]
    if not os.path.isfile(jpath):
        if path.endswith((".pt", ".pth", ".ckpt", ".tar", ".pkl")):
            raise CheckpointError(
                f"{path}: pickle-based checkpoints are not loaded (they can run code); "
                "vidssl reads its own safetensors + JSON checkpoints"
            )
        raise CheckpointError(f"{jpath}: checkpoint not found")
    try:
        with open(jpath) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{jpath}: unreadable checkpoint metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{jpath}: not a vidssl checkpoint (format {meta.get('format')!r})")
    if not os.path.isfile(base + ".safetensors"):
        raise CheckpointError(f"{base}.safetensors: weights missing beside {jpath}")
    return meta


def load_weights(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta, weights) of a checkpoint, read with safetensors (no code runs)."""
    meta = read_meta(path)
    base = _json_path(path)[: -len(".json")]
    try:
        return meta, load_file(base + ".safetensors")
    except Exception as e:  # safetensors raises SafetensorError / OSError on damaged files
        raise CheckpointError(f"{base}.safetensors: unreadable weights ({e})") from None


def load_training_state(path: str, optimizer: torch.optim.Optimizer | None) -> None:
    """Restore optimiser tensors and RNG states saved with the checkpoint."""
    meta = read_meta(path)
    base = _json_path(path)[: -len(".json")]
    state = load_file(base + ".state.safetensors")
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
    model = backbones.build(meta["backbone"], meta["width"])
    sub = {k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")}
    missing, unexpected = model.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{_json_path(path)}: weights do not fit {meta['backbone']} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device), meta
