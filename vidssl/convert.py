"""Weights in and out of vidssl: torchvision's video ResNets, a Hugging Face-style folder, ONNX.

- torchvision: vidssl's ``r3d_18`` and ``r2plus1d_18`` are torchvision's models of those names
  under other key names (``stem``, ``layer1``..``layer4``, ``downsample`` for ``conv1``,
  ``conv2``..``conv5``, ``shortcut``, and each conv and its BN in a Sequential). The rename is
  one to one, so the features are identical. ``torchvision:FILE`` (a state_dict, .pth or
  .safetensors, e.g. the Kinetics-400 weights a user downloads) is accepted wherever a checkpoint
  is; ``vidssl convert CKPT OUT.pt --to torchvision`` writes a state_dict that torchvision's
  ``r3d_18(num_classes=K)`` loads with ``strict=True``.
- A Hugging Face-style folder: ``config.json`` (backbone, width and how clips are prepared) and
  ``model.safetensors`` (the backbone's weights, plain names); ``load_encoder(folder)`` reads it.
- ONNX: the backbone from normalised clips ``(B, 3, T, H, W)`` to pooled features, batch dynamic.
"""

from __future__ import annotations

import json
import os
import pickle

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import __version__, backbones
from .atomic import write_atomic
from .checkpoint import CheckpointError, EncoderInfo

TORCHVISION = ("r3d_18", "r2plus1d_18")  # the vidssl backbones that are torchvision models
PREFIX = "torchvision:"
HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"
# How torchvision's video models were trained (their weights' transforms): 128x171 frames,
# 112x112 centre crops, 16-frame clips, RGB normalised by the Kinetics statistics vidssl uses too.
TORCHVISION_INPUT = {"modality": "rgb", "clip_length": 16, "frame_size": [128, 171], "crop": 112}
PARTS = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1", "shortcut": "downsample"}


def tv_key(key: str) -> str:
    """A vidssl backbone key as torchvision names it: ``conv3.0.bn1.weight`` -> ``layer2.0.conv1.1.weight``."""
    block, rest = key.split(".", 1)
    if block == "conv1":
        return "stem." + rest
    index, part, tail = rest.split(".", 2)
    return f"layer{int(block[4:]) - 1}.{index}.{PARTS[part]}.{tail}"


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pth read with ``weights_only=True`` (no code runs).
    A ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are undone."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: weights file not found")
    if path.endswith(".safetensors"):
        try:
            sd = load_file(path)
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
            why = str(e).splitlines()[0][:90]
            raise CheckpointError(
                f"{path}: not a plain state_dict (only tensors are read, never pickled code: {why}); "
                "a training checkpoint of torchvision's scripts? save its 'model' entry alone, where you trust the file"
            ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{path}: holds {type(sd).__name__}, not a state_dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def from_torchvision(sd: dict[str, torch.Tensor], where: str) -> tuple[str, float, dict[str, torch.Tensor]]:
    """(backbone name, width, vidssl weights) of a torchvision r3d_18 / r2plus1d_18 state_dict; its
    ``fc`` (the Kinetics classifier) is left out: vidssl backbones end at the pooled feature."""
    stem = sd.get("stem.0.weight")
    if stem is None or stem.dim() != 5:
        raise CheckpointError(f"{where}: no 'stem.0.weight' conv; not a torchvision video ResNet state_dict")
    later = sd.get("layer2.0.conv1.0.weight")
    if stem.shape[2:] == (1, 7, 7):
        name = "r2plus1d_18"
    elif later is not None and later.dim() == 5 and later.shape[2] == 1:
        raise CheckpointError(f"{where}: torchvision's mc3_18 (2D convs after conv2) is not a vidssl backbone; "
                              f"vidssl converts {' and '.join(TORCHVISION)}")  # fmt: skip
    else:
        name = "r3d_18"
    width = sd["layer1.0.conv1.1.weight"].shape[0] / 64 if "layer1.0.conv1.1.weight" in sd else 1.0
    with torch.device("meta"):
        own = backbones.build(name, width).state_dict()
    missing = [tv_key(k) for k in own if tv_key(k) not in sd]
    extra = sorted(set(sd) - {tv_key(k) for k in own} - {"fc.weight", "fc.bias"})
    if missing or extra:
        raise CheckpointError(f"{where}: not torchvision's {name} layout: missing {missing[:3]} ({len(missing)}), "
                              f"unexpected {extra[:3]} ({len(extra)})")  # fmt: skip
    return name, width, {k: sd[tv_key(k)] for k in own}


def to_torchvision(backbone: nn.Module, name: str, fc: tuple[torch.Tensor, torch.Tensor] | None = None,
                   num_classes: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """A state_dict torchvision's ``NAME(num_classes=K)`` loads with ``strict=True``. ``fc``: a
    fine-tuned classifier (weight, bias); else a new one of ``num_classes`` initialised as
    torchvision does (normal, std 0.01; bias 0), from ``seed``."""
    if name not in TORCHVISION:
        raise CheckpointError(f"{name} has no torchvision counterpart (those are {', '.join(TORCHVISION)})")
    out = {tv_key(k): v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    if fc is None:
        g = torch.Generator().manual_seed(seed)
        fc = (torch.randn(num_classes, backbone.num_features, generator=g) * 0.01, torch.zeros(num_classes))
    out["fc.weight"], out["fc.bias"] = (t.detach().cpu().contiguous() for t in fc)
    return out


def hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, HF_CONFIG))


def is_foreign(path: str) -> bool:
    """``torchvision:FILE`` or a model folder (what ``foreign`` reads), told apart without reading it."""
    return path.startswith(PREFIX) or hf_folder(path)


def foreign(path: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(meta, weights as a vidssl checkpoint holds them) of ``torchvision:FILE`` or a Hugging
    Face-style folder; None for anything else (a vidssl checkpoint)."""
    if path.startswith(PREFIX):
        file = path[len(PREFIX) :]
        name, width, weights = from_torchvision(read_state_dict(file), file)
        meta = {"kind": "imported", "source": f"torchvision {name}", "backbone": name, "width": width,
                "task": None, **TORCHVISION_INPUT}  # fmt: skip
    elif hf_folder(path):
        cfg_path = os.path.join(path, HF_CONFIG)
        try:
            with open(cfg_path) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg_path}: unreadable ({e})") from None
        if not isinstance(meta, dict) or meta.get("model_type") != "vidssl":
            raise CheckpointError(f"{cfg_path}: not a vidssl model folder (model_type {meta.get('model_type')!r})")
        weights = read_state_dict(os.path.join(path, HF_WEIGHTS))
    else:
        return None
    return meta, {"backbone." + k: v for k, v in weights.items()}


def write_hf(folder: str, backbone: nn.Module, info: EncoderInfo) -> None:
    """``folder/config.json`` + ``folder/model.safetensors``; refuses a folder that holds anything."""
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise FileExistsError(f"{folder}: already exists and is not an empty folder; name another")
    os.makedirs(folder, exist_ok=True)
    config = {
        "model_type": "vidssl",
        "vidssl_version": __version__,
        "backbone": info.backbone,
        "width": info.width,
        "num_features": backbone.num_features,
        "modality": info.modality,
        "clip_length": info.clip_length,
        "frame_size": list(info.frame_size) if info.frame_size else None,
        "crop": info.crop,
        "kind": info.kind,
        "task": info.task,
        "step": info.step,
        "rotations": info.rotations,
        "source": info.path,
        "normalize": "Kinetics-400 mean/std per RGB channel on [0, 1] frames (vidssl.data.transforms)",
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    write_atomic(os.path.join(folder, HF_WEIGHTS), lambda f: f.write(safetensors_bytes(weights)))
    write_atomic(os.path.join(folder, HF_CONFIG), lambda f: f.write(json.dumps(config, indent=1).encode()))


ONNX_OPSET = 18  # the torch.export-based exporter's own opset (17 needs a version conversion that failed here)


def export_onnx(backbone: nn.Module, info: EncoderInfo, path: str, opset: int = ONNX_OPSET) -> None:
    """The backbone as ONNX: input ``clips`` (B, 3, T, crop, crop) normalised (DIF: differences),
    output ``features`` (B, num_features); B is dynamic. Needs the onnx and onnxscript packages."""
    try:
        import onnxscript  # noqa: F401  (the exporter's own dependency; a clear line if absent)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript") from None
    x = torch.zeros(2, 3, info.clip_length, info.crop, info.crop)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        backbone.eval(), (x,), input_names=["clips"], output_names=["features"],
        opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
    )  # fmt: skip
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert(cfg) -> str:
    """`vidssl convert` (ConvertConfig): SOURCE to OUT in the format ``cfg.to``; returns what it wrote."""
    from .checkpoint import load_encoder, load_weights, save

    out = cfg.out[: -len(".json")] if cfg.to == "vidssl" and cfg.out.endswith(".json") else cfg.out
    target = out + ".json" if cfg.to == "vidssl" else out
    if os.path.exists(target) and not (cfg.to == "hf" and os.path.isdir(out) and not os.listdir(out)):
        raise FileExistsError(f"{target}: already exists; name another OUT (nothing is overwritten)")
    enc = load_encoder(cfg.source)
    info = enc.info
    if cfg.to == "vidssl":
        if not is_foreign(cfg.source):  # (the source was read once, above)
            raise ValueError(f"{cfg.source}: already a vidssl checkpoint; --to torchvision, hf or onnx exports it")
        meta = {"kind": "imported", "backbone": info.backbone, "width": info.width, "task": None, "step": 0,
                "source": info.path, "modality": info.modality, "clip_length": info.clip_length,
                "frame_size": list(info.frame_size) if info.frame_size else None, "crop": info.crop}  # fmt: skip
        return save(out, nn.ModuleDict({"backbone": enc.backbone}), meta)
    if cfg.to == "torchvision":
        if not out.endswith((".pt", ".pth", ".safetensors")):
            raise ValueError(f"{out}: name a .pt, .pth or .safetensors file for a torchvision state_dict")
        _, weights = load_weights(cfg.source)
        fc = (weights["fc.weight"], weights["fc.bias"]) if "fc.weight" in weights and "fc.bias" in weights else None
        sd = to_torchvision(enc.backbone, info.backbone, fc, cfg.num_classes, cfg.seed)
        if out.endswith(".safetensors"):
            write_atomic(out, lambda f: f.write(safetensors_bytes(sd)))
        else:
            write_atomic(out, lambda f: torch.save(sd, f))
        fc_words = f"fc {tuple(sd['fc.weight'].shape)}" + ("" if fc else " newly initialised")
        return f"{out} (torchvision {info.backbone}, {fc_words})"
    if cfg.to == "hf":
        write_hf(out, enc.backbone, info)
        return f"{out}/ ({HF_CONFIG}, {HF_WEIGHTS})"
    if not out.endswith(".onnx"):
        raise ValueError(f"{out}: name a .onnx file")
    export_onnx(enc.backbone, info, out, cfg.opset)
    return (
        f"{out} (opset {cfg.opset}; input clips (B, 3, {info.clip_length}, {info.crop}, {info.crop}), output features)"
    )
