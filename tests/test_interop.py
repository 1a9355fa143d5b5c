"""Weights in and out: torchvision's layout, the model folder, ONNX (vidssl.convert)."""

import argparse
import json
import os

import pytest
import torch
import torch.nn.functional as F

from vidssl import backbones
from vidssl.checkpoint import CheckpointError, load_encoder, save
from vidssl.cli import main
from vidssl.convert import from_torchvision, to_torchvision


def torchvision_layout(arch: str, classes: int = 400) -> dict[str, tuple]:
    """Key -> shape of torchvision's r3d_18 / r2plus1d_18 state_dict, written from its model file
    (torchvision/models/video/resnet.py), not from vidssl's: a stem; layer1..layer4 of two
    BasicBlocks, each ``conv1 = Sequential(conv, BN, ReLU)`` and ``conv2 = Sequential(conv, BN)``;
    ``downsample = Sequential(Conv3d 1x1x1, BN)`` where the shape changes; Conv2Plus1D is
    ``Sequential(Conv3d(in, mid, (1,3,3)), BN(mid), ReLU, Conv3d(mid, out, (3,1,1)))`` with the
    block's ``midplanes = inplanes*planes*27 // (inplanes*9 + 3*planes)`` for both convs."""
    shapes: dict[str, tuple] = {}

    def bn(prefix, n):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    if arch == "r3d_18":
        shapes["stem.0.weight"] = (64, 3, 3, 7, 7)
        bn("stem.1", 64)
    else:
        shapes["stem.0.weight"] = (45, 3, 1, 7, 7)
        bn("stem.1", 45)
        shapes["stem.3.weight"] = (64, 45, 3, 1, 1)
        bn("stem.4", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512), 1):
        for j in range(2):
            p, cin = f"layer{i}.{j}", inplanes if j == 0 else planes
            mid = (cin * planes * 27) // (cin * 9 + 3 * planes)
            for conv, a in (("conv1", cin), ("conv2", planes)):
                if arch == "r3d_18":
                    shapes[f"{p}.{conv}.0.weight"] = (planes, a, 3, 3, 3)
                else:
                    shapes[f"{p}.{conv}.0.0.weight"] = (mid, a, 1, 3, 3)
                    bn(f"{p}.{conv}.0.1", mid)
                    shapes[f"{p}.{conv}.0.3.weight"] = (planes, mid, 3, 1, 1)
                bn(f"{p}.{conv}.1", planes)
            if j == 0 and i > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"], shapes["fc.bias"] = (classes, 512), (classes,)
    return shapes


def random_state_dict(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in torchvision_layout(arch).items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            sd[k] = torch.randn(shape, generator=g) * 0.1
        elif k.endswith("weight") and len(shape) == 1:  # BN scale
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * (2.0 / max(1, torch.Size(shape)[1:].numel())) ** 0.5
    return sd


def torchvision_forward(sd: dict, x: torch.Tensor, arch: str) -> torch.Tensor:
    """torchvision's VideoResNet forward up to the pooled feature (before fc), over its state_dict."""

    def bn(x, p):
        return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def conv(x, p, s):
        if arch == "r3d_18":
            return F.conv3d(x, sd[p + ".weight"], stride=s, padding=1)
        x = F.relu(bn(F.conv3d(x, sd[p + ".0.weight"], stride=(1, s, s), padding=(0, 1, 1)), p + ".1"))
        return F.conv3d(x, sd[p + ".3.weight"], stride=(s, 1, 1), padding=(1, 0, 0))

    if arch == "r3d_18":
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), "stem.1"))
    else:
        x = F.relu(bn(F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(0, 3, 3)), "stem.1"))
        x = F.relu(bn(F.conv3d(x, sd["stem.3.weight"], padding=(1, 0, 0)), "stem.4"))
    for i in range(1, 5):
        for j in range(2):
            p, s = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            out = F.relu(bn(conv(x, p + ".conv1.0", s), p + ".conv1.1"))
            out = bn(conv(out, p + ".conv2.0", 1), p + ".conv2.1")
            ds = p + ".downsample.0.weight"
            res = bn(F.conv3d(x, sd[ds], stride=s), p + ".downsample.1") if ds in sd else x
            x = F.relu(out + res)
    return F.adaptive_avg_pool3d(x, 1).flatten(1)


TV_PARAMS = {"r3d_18": 33_371_472, "r2plus1d_18": 31_505_325}  # torchvision's published num_params (with fc)


@pytest.mark.parametrize("arch", ["r3d_18", "r2plus1d_18"])
def test_torchvision_layout_loads_and_gives_identical_features(arch, tmp_path):
    layout = torchvision_layout(arch)
    params = sum(
        torch.Size(s).numel() for k, s in layout.items() if not k.split(".")[-1].startswith(("running", "num"))
    )
    assert params == TV_PARAMS[arch]  # the layout written above is torchvision's
    sd = random_state_dict(arch)
    name, width, weights = from_torchvision(sd, "test")
    assert (name, width) == (arch, 1.0)
    model = backbones.build(name, width)
    model.load_state_dict(weights)  # strict: every key, every shape
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.eval()(x), torchvision_forward(sd, x, arch)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    back = to_torchvision(model, name, fc=(sd["fc.weight"], sd["fc.bias"]))
    assert {k: tuple(v.shape) for k, v in back.items()} == layout  # torchvision's strict=True would load it
    assert all(torch.equal(back[k], sd[k]) for k in sd)

    path = str(tmp_path / f"{arch}-kinetics.pth")
    torch.save(sd, path)
    enc = load_encoder("torchvision:" + path)
    assert (enc.info.backbone, enc.info.frame_size, enc.info.crop, enc.info.modality) == (arch, (128, 171), 112, "rgb")
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), theirs, rtol=1e-5, atol=1e-5)


def test_convert_command_both_ways(tmp_path, capsys):
    sd = random_state_dict("r3d_18")
    src = str(tmp_path / "r3d_18.pth")
    torch.save({"model": sd}, src)  # the reference scripts' wrapper is undone
    ckpt = str(tmp_path / "imported")
    assert main(["convert", "torchvision:" + src, ckpt]) == 0
    enc = load_encoder(ckpt)
    assert enc.info.kind == "imported" and enc.info.frame_size == (128, 171)
    out = str(tmp_path / "back.safetensors")
    assert main(["convert", ckpt, out, "--to", "torchvision"]) == 0
    from safetensors.torch import load_file

    back = load_file(out)
    assert {k: tuple(v.shape) for k, v in back.items()} == torchvision_layout("r3d_18")
    assert all(torch.equal(back[k], sd[k]) for k in sd if not k.startswith("fc."))
    assert "newly initialised" in capsys.readouterr().out  # the import dropped Kinetics' fc: said so
    assert main(["convert", ckpt, out, "--to", "torchvision"]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_a_finetuned_classifier_becomes_torchvisions_fc(tmp_path):
    from torch import nn

    from vidssl.finetune import Classifier

    torch.manual_seed(0)
    clf = Classifier(backbones.build("r3d_18", 0.25), 7)
    save(str(tmp_path / "ft"), clf, {"kind": "finetune", "backbone": "r3d_18", "width": 0.25, "step": 3})
    assert main(["convert", str(tmp_path / "ft"), str(tmp_path / "tv.pt"), "--to", "torchvision"]) == 0
    sd = torch.load(str(tmp_path / "tv.pt"), weights_only=True)
    assert torch.equal(sd["fc.weight"], clf.fc.weight.detach()) and sd["fc.weight"].shape == (7, 128)
    assert isinstance(clf.fc, nn.Linear)


def test_refusals_name_the_file(tmp_path):
    bad = str(tmp_path / "train.pth")
    torch.save({"model": {"stem.0.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, bad)
    with pytest.raises(CheckpointError, match="train.pth: not a plain state_dict"):
        load_encoder("torchvision:" + bad)
    mc3 = random_state_dict("r3d_18")
    mc3["layer2.0.conv1.0.weight"] = torch.zeros(128, 64, 1, 3, 3)
    torch.save(mc3, str(tmp_path / "mc3.pth"))
    with pytest.raises(CheckpointError, match="mc3_18"):
        load_encoder("torchvision:" + str(tmp_path / "mc3.pth"))
    with pytest.raises(CheckpointError, match="torchvision:"):  # a bare .pth says how to load it
        load_encoder(str(tmp_path / "mc3.pth"))


def _small_checkpoint(tmp_path, name="r3d_10"):
    from torch import nn

    torch.manual_seed(0)
    path = str(tmp_path / "pt")
    meta = {"kind": "pretrain", "backbone": name, "width": 0.25, "task": "rotation", "step": 5,
            "config": {"modality": "dif", "clip_length": 8, "frame_size": [40, 48], "crop": 32}}  # fmt: skip
    save(path, nn.ModuleDict({"backbone": backbones.build(name, 0.25)}), meta)
    return path


def test_model_folder_round_trip(tmp_path):
    ckpt = _small_checkpoint(tmp_path)
    folder = str(tmp_path / "hf")
    assert main(["convert", ckpt, folder, "--to", "hf"]) == 0
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert (config["modality"], config["clip_length"], config["frame_size"], config["crop"]) == ("dif", 8, [40, 48], 32)
    a, b = load_encoder(ckpt), load_encoder(folder)
    assert (b.info.backbone, b.info.modality, b.info.clip_length, b.info.frame_size) == ("r3d_10", "dif", 8, (40, 48))
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_onnx_export_matches_within_1e_4(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is pinned in requirements.txt")
    ckpt = _small_checkpoint(tmp_path, "r21d_10")
    path = str(tmp_path / "enc.onnx")
    assert main(["convert", ckpt, path, "--to", "onnx"]) == 0
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 32, 32)  # another batch size than the export's example
    (y,) = session.run(None, {"clips": x.numpy()})
    with torch.no_grad():
        ref = load_encoder(ckpt).eval()(x)
    assert y.shape == (3, 128)
    assert (torch.from_numpy(y) - ref).abs().max() < 1e-4


# ------------------------------------------------------------------ embeddings (vidssl.embed)
from conftest import SHARED_DATA, needs_shared  # noqa: E402

DIVING = os.path.join(SHARED_DATA, "ucf101-sample", "UCF-101", "Diving")


def _rgb_checkpoint(tmp_path):
    from torch import nn

    torch.manual_seed(0)
    path = str(tmp_path / "rgb")
    meta = {"kind": "pretrain", "backbone": "r3d_10", "width": 0.25, "task": "rotation", "step": 5,
            "config": {"modality": "rgb", "clip_length": 8, "frame_size": [64, 80], "crop": 56}}  # fmt: skip
    save(path, nn.ModuleDict({"backbone": backbones.build("r3d_10", 0.25)}), meta)
    return path


@needs_shared
def test_embed_gives_the_features_the_evaluations_read(tmp_path):
    """A video's embedding equals its features as retrieval and the probes compute them (the
    dataset pipeline: frame size, K evenly spaced centre crops, the checkpoint's clip length)."""
    from vidssl.data.datasets import load_dataset
    from vidssl.data.sampling import UniformClips
    from vidssl.data.transforms import eval_transform
    from vidssl.features import extract_features

    enc = load_encoder(_rgb_checkpoint(tmp_path))
    ds = load_dataset("folder", DIVING, size=(64, 80), sampler=UniformClips(3, 8), transform=eval_transform(56))
    feats, _ = extract_features(enc.backbone, ds, "pooled", "rgb", progress=False, channels_last=False)
    video = os.path.join(DIVING, ds.records[1].rel)
    one = enc.embed(video, clips=3)
    assert one.shape == (128,)
    torch.testing.assert_close(one, feats[1].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(enc.embed(video, clips=3, per_clip=True), feats[1], rtol=1e-4, atol=1e-5)
    assert enc.embed(video, clips=2, feature="vcop").shape[0] > 128
    block3, _ = extract_features(enc.backbone, ds, "conv3", "rgb", progress=False, channels_last=False)
    assert block3.shape[-1] == 32  # conv3's channels at width 0.25
    torch.testing.assert_close(enc.embed(video, clips=3, feature="conv3"), block3[1].mean(0), rtol=1e-4, atol=1e-5)


@needs_shared
def test_embed_command_resumes_and_skips_a_bad_video(tmp_path, monkeypatch, caplog):
    import shutil

    from vidssl.embed import Encoder, read_embeddings

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in sorted(os.listdir(DIVING))[:4]:
        shutil.copy(os.path.join(DIVING, name), videos / name)
    (videos / "broken.avi").write_bytes(b"not a video")
    ckpt = _rgb_checkpoint(tmp_path)
    args = ["embed", ckpt, str(videos), "--clips", "2", "--save-every", "1", "--no-progress"]
    whole = str(tmp_path / "whole.safetensors")
    assert main([*args, "--out", whole]) == 0
    feats, names, meta = read_embeddings(whole)
    assert feats.shape == (4, 128) and len(names) == 4 and not any("broken" in n for n in names)
    assert meta["failed"][0][0].endswith("broken.avi") and "skipped 1 of 5" in caplog.text

    calls, real = [], Encoder.embed

    def dies_on_the_third(self, *a, **k):
        calls.append(a[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    out = str(tmp_path / "feats.safetensors")
    monkeypatch.setattr(Encoder, "embed", dies_on_the_third)
    assert main([*args, "--out", out]) == 130  # killed after two videos
    assert not os.path.exists(out) and os.path.isdir(out + ".parts")
    calls.clear()
    monkeypatch.setattr(Encoder, "embed", lambda self, *a, **k: (calls.append(a[0]), real(self, *a, **k))[1])
    assert main([*args, "--out", out]) == 0
    # broken.avi (first by name) failed and one video was embedded before the kill: both were saved
    assert len(calls) == 3 and not any("broken" in c for c in calls)
    again, names2, _ = read_embeddings(out)
    assert names2 == names and torch.equal(again, feats)
    assert not os.path.exists(out + ".parts")
    assert main([*args, "--out", out]) == 2  # an existing file is never overwritten
    assert main([*args, "--out", str(tmp_path / "other.safetensors"), "--clips", "3"]) == 0


def test_embed_refuses_partial_results_of_other_settings(tmp_path):
    from vidssl.embed import _open_parts

    _open_parts(str(tmp_path / "f.parts"), {"clips": 2}, False)
    with pytest.raises(FileExistsError, match="clips differ"):
        _open_parts(str(tmp_path / "f.parts"), {"clips": 3}, False)
