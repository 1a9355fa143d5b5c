import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from vidssl import checkpoint
from vidssl.checkpoint import load_pretext_model
from vidssl.cli import main
from vidssl.data.datasets import ucf101
from vidssl.data.synth import SynthConfig, generate
from vidssl.data.transforms import eval_transform
from vidssl.eval_pretext import pretext_accuracy
from vidssl.pretrain import PretrainConfig, pretrain

# 4 classes x 6 groups x 3 clips of 40 frames at 48x64: split 1 tests on groups 1-2 (24 videos).
SMALL = SynthConfig(classes=4, groups=6, clips=3, frames=40, height=48, width=64, seed=1)
FAST = dict(
    backbone="r3d_10",
    width=0.25,
    frame_size=(40, 40),
    crop=32,
    clip_length=8,
    batch_size=8,
    val_videos=4,
    progress=False,
    tensorboard=False,
    workers=2,
    log_every=50,
)


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("small"))
    generate(root, SMALL, progress=False)
    return root


def held_out_accuracy(ckpt, root):
    """Pretext accuracy on the split-1 TEST videos, which pretraining never saw."""
    model, cfg = load_pretext_model(ckpt)
    test = ucf101(
        root,
        1,
        "test",
        sampler=model.task.sampler(cfg.clip_length),
        transform=eval_transform(cfg.crop),
        size=cfg.frame_size,
    )
    assert len(test) == 24
    return pretext_accuracy(model, cfg, test, draws=2)


def test_rotation_learns_well_above_chance(small_synth, tmp_path):
    ckpt = pretrain(PretrainConfig(small_synth, out=str(tmp_path), task="rotation", iters=300, lr=0.05, **FAST))
    acc = held_out_accuracy(ckpt.replace("best", "last"), small_synth)["acc"]
    assert acc >= 0.40, f"rotation accuracy {acc:.2f} on held-out videos (chance 0.25; measured 0.55)"


def test_clip_order_learns_well_above_chance(small_synth, tmp_path):
    # The paper's head collapses on this data (loss pinned at ln 6, see README); the centred head learns.
    cfg = PretrainConfig(
        small_synth, out=str(tmp_path), task="clip_order", order_head="centered", interval=4, iters=300, lr=0.01, **FAST
    )
    ckpt = pretrain(cfg)
    acc = held_out_accuracy(ckpt.replace("best", "last"), small_synth)["acc"]
    assert acc >= 1 / 3, f"clip order accuracy {acc:.2f} on held-out videos (chance 0.17; measured 0.50)"


@pytest.mark.parametrize("task", ["rotation", "clip_order", "joint"])
def test_resume_equals_an_uninterrupted_run(small_synth, tmp_path, task):
    cfg = dict(FAST, batch_size=4, task=task, interval=4, lr=0.01, bf16=True)
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "straight"), iters=10, **cfg))
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "split"), iters=5, **cfg))
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "split"), iters=10, resume=True, **cfg))
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "split" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_run_resumed_in_another_precision_says_so(small_synth, tmp_path, monkeypatch, caplog):
    """--bf16 unset picks by the machine: a run started where bf16 is faster (AMX, CUDA) and resumed
    where it is not continues in fp32, and the log says it; --bf16 keeps its precision."""
    from vidssl import runtime

    cfg = dict(FAST, batch_size=4, lr=0.01, val_videos=0, workers=0, out=str(tmp_path / "run"))
    monkeypatch.setattr(runtime, "bf16_fast", lambda device: True)  # the machine it started on
    pretrain(PretrainConfig(small_synth, iters=2, **cfg))
    assert json.load(open(tmp_path / "run" / "checkpoints" / "last.json"))["bf16"] is True
    monkeypatch.setattr(runtime, "bf16_fast", lambda device: False)  # another machine
    with caplog.at_level("WARNING", logger="vidssl"):
        pretrain(PretrainConfig(small_synth, iters=3, resume=True, **cfg))
    assert "trained in bf16; it continues in fp32 here (--bf16 keeps bf16)" in caplog.text
    assert json.load(open(tmp_path / "run" / "checkpoints" / "last.json"))["bf16"] is False
    caplog.clear()
    with caplog.at_level("WARNING", logger="vidssl"):  # the same machine again: nothing to say
        pretrain(PretrainConfig(small_synth, iters=4, resume=True, **cfg))
    assert "resuming" in caplog.text and "continues in" not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="vidssl"):  # --bf16 on a resume is taken (as --device is), and said
        pretrain(PretrainConfig(small_synth, iters=5, resume=True, **{**cfg, "bf16": True}))
    assert "trained in fp32; it continues in bf16 here (--no-bf16 keeps fp32)" in caplog.text


def test_grad_checkpointing_trains_the_same_weights(small_synth, tmp_path):
    cfg = dict(FAST, batch_size=4, iters=4, lr=0.01, val_videos=0)
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "plain"), **cfg))
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "saving"), grad_checkpointing=True, **cfg))
    a = load_file(str(tmp_path / "plain" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "saving" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_the_same_weights_and_checkpoints_load_without_it(small_synth, tmp_path):
    # fp32: under bf16 autocast (the default on CPUs with AMX) eager and compiled kernels round
    # differently and 3 steps drift 0.018 apart (measured on one such CPU), more than this test allows.
    cfg = dict(FAST, batch_size=4, iters=3, lr=0.01, val_videos=0, workers=0, bf16=False)
    pretrain(PretrainConfig(small_synth, out=str(tmp_path / "eager"), **cfg))
    best = pretrain(PretrainConfig(small_synth, out=str(tmp_path / "compiled"), compile=True, **cfg))
    a = load_file(str(tmp_path / "eager" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes: the backbone is compiled in place
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-3, f"compiled training drifted by {worst}"
    model, _ = load_pretext_model(best)  # a plain eager model loads it strictly
    assert torch.equal(model.backbone.first_conv.weight, b["backbone.conv1.0.weight"])


def test_checkpoints_logs_and_rebuilding_from_the_file(small_synth, tmp_path):
    out = tmp_path / "run"
    best = pretrain(
        PretrainConfig(
            small_synth,
            out=str(out),
            task="rotation",
            iters=6,
            ckpt_every=3,
            lr=0.01,
            **{**FAST, "tensorboard": True, "log_every": 2},
        )
    )
    files = sorted(os.listdir(out / "checkpoints"))
    assert files == [f"{n}.{s}" for n in ("best", "last") for s in ("json", "safetensors", "state.safetensors")]
    meta = json.load(open(out / "checkpoints" / "last.json"))
    assert (meta["backbone"], meta["width"], meta["task"], meta["step"]) == ("r3d_10", 0.25, "rotation", 6)
    assert meta["config"]["rotations"] == "0,90,180,270" and meta["config"]["frame_size"] == [40, 40]
    backbone, _ = checkpoint.load_backbone(best)
    weights = load_file(best.replace(".json", ".safetensors"))
    assert torch.equal(backbone.first_conv.weight, weights["backbone.conv1.0.weight"])
    header = open(out / "log.csv").readline().strip().split(",")
    assert header[:5] == ["step", "epoch", "split", "loss", "acc"] and "clips_per_s" in header and "lr" in header
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out / "tb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"), size_guidance={"tensors": 0})
    ea.Reload()
    assert "config/text_summary" in ea.Tags()["tensors"]  # the resolved config as text
    text = ea.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '| rotations | "0,90,180,270" |' in text and "| lr | 0.01 |" in text
    assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")  # the final metrics as hparams
    # a run of another model refuses to resume from these checkpoints, naming both values
    with pytest.raises(ValueError, match=r"--backbone 'c3d' \(the run has 'r3d_10'\)"):
        pretrain(
            PretrainConfig(
                small_synth, out=str(out), task="rotation", iters=8, resume=True, **{**FAST, "backbone": "c3d"}
            )
        )


def test_pickle_checkpoints_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(checkpoint.CheckpointError, match="pickle-based checkpoints are not loaded"):
        checkpoint.load_backbone(str(evil))
    (tmp_path / "fake.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(checkpoint.CheckpointError, match="not a vidssl checkpoint"):
        checkpoint.load_weights(str(tmp_path / "fake.json"))
    assert not marker.exists()


def test_bad_settings_give_clear_errors(small_synth, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        pretrain(PretrainConfig(small_synth, backbone="resnet50"))
    with pytest.raises(ValueError, match="no usable videos for clip_order"):
        # 3 clips x 16 frames + 2 x 8 needs 64 frames; these videos have 40
        pretrain(PretrainConfig(small_synth, out=str(tmp_path), task="clip_order", **{**FAST, "clip_length": 16}))
    with pytest.raises(ValueError, match="larger than the frames"):
        pretrain(PretrainConfig(small_synth, out=str(tmp_path), **{**FAST, "crop": 64}))
    for args, words in [
        (["--task", "colour"], "invalid choice: 'colour'"),
        (["--rotations", "0,45"], "invalid choice: '0,45'"),
    ]:
        assert main(["pretrain", small_synth, *args]) == 2
        assert words in capsys.readouterr().err
    assert main(["pretrain", small_synth, "--out", str(tmp_path), "--width", "-1"]) == 2
    assert "--width must be in (0, 4]" in capsys.readouterr().err


def test_ddp_two_processes_with_torchrun(small_synth, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vidssl",
        "pretrain",
        small_synth,
        "--out",
        str(out),
        "--backbone",
        "r3d_10",
        "--width",
        "0.25",
        "--frame-size",
        "40x40",
        "--crop",
        "32",
        "--clip-length",
        "8",
        "--batch-size",
        "4",
        "--iters",
        "6",
        "--lr",
        "0.01",
        "--val-videos",
        "4",
        "--workers",
        "0",
        "--no-progress",
        "--no-tensorboard",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] is True and summary["steps"] == 6
    assert r.stdout.count("best checkpoint:") == 1  # rank 0 alone reports and writes
