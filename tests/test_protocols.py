"""The papers' protocols where vidssl once deviated from them silently (each test fails on the code
before its fix): validation targets, DDP draws, clip tuples that never overlap, the retrieval
levels, temporal resampling, fine-tuned checkpoints as inputs of every evaluation, the attention
picture of DIF and rotation-set models, Kinetics' val/ split, sample standard deviations."""

import json
import math
import os
import shutil

import pytest
import torch
import yaml

from vidssl.checkpoint import load_encoder
from vidssl.cli import main
from vidssl.config import PretrainConfig
from vidssl.data.datasets import load_dataset
from vidssl.data.sampling import ClipTuple, balanced_draw, sample_seed
from vidssl.data.synth import SynthConfig, generate
from vidssl.finetune import summarize
from vidssl.pretrain import pretrain, task_seed
from vidssl.tasks import ClipOrderTask

TINY_NET = dict(backbone="r3d_10", width=0.25, progress=False, tensorboard=False, workers=0, channels_last=False)


@pytest.fixture(scope="module")
def synth60(tmp_path_factory):
    """75 videos (60 in split 1's training list, so 6 are held out for validation), 40 frames of 32x32."""
    root = str(tmp_path_factory.mktemp("synth60"))
    generate(root, SynthConfig(classes=3, groups=5, clips=5, frames=40, height=32, width=32, seed=4), progress=False)
    return root


def test_validation_targets_are_fixed_per_video_and_balanced(synth60, tmp_path, monkeypatch):
    seen = []
    original = ClipOrderTask.make_batch

    def spy(self, clips, g, targets=None):
        inputs, t = original(self, clips, g, targets)
        if not self.training:
            seen.append(t.tolist())
        return inputs, t

    monkeypatch.setattr(ClipOrderTask, "make_batch", spy)
    cfg = PretrainConfig(synth60, out=str(tmp_path), task="clip_order", clip_length=8, interval=2, frame_size=(24, 24),
                         crop=16, batch_size=8, iters=14, lr=1e-3, val_videos=6, **TINY_NET)  # fmt: skip
    pretrain(cfg)
    assert len(seen) == 3  # after epochs 0 and 1 (6 steps each) and at the end
    assert seen[0] == seen[1] == seen[2]  # the same question every epoch
    assert sorted(seen[0]) == list(range(6))  # 6 videos, 6 orders: each once


def test_balanced_draw_is_fixed_and_balanced():
    a = balanced_draw(torch.arange(60), 6, seed=3)
    assert torch.equal(a, balanced_draw(torch.arange(60), 6, seed=3))
    assert torch.bincount(a, minlength=6).tolist() == [10] * 6
    assert not torch.equal(a, balanced_draw(torch.arange(60), 6, seed=4))
    assert torch.equal(balanced_draw(torch.tensor([7, 2]), 6, seed=3), a[[7, 2]])  # per video, not per batch


def test_ddp_ranks_draw_different_task_targets():
    assert task_seed(0, 5) == sample_seed(0, 5, 1)  # one process: the draws of before
    assert task_seed(0, 5, rank=0, world=2) != task_seed(0, 5, rank=1, world=2)
    g = [torch.Generator().manual_seed(task_seed(0, 5, r, 2)) for r in (0, 1)]
    assert not torch.equal(torch.randint(6, (8,), generator=g[0]), torch.randint(6, (8,), generator=g[1]))


@pytest.fixture
def mixed_lengths(make_video):
    """A folder of 2 videos of 60 frames and 2 of 30."""
    paths = [make_video(f"mix/{i}.avi", frames=n, h=32, w=32) for i, n in enumerate((60, 60, 30, 30))]
    return os.path.dirname(paths[0])


def test_clip_tuples_never_loop_short_videos(mixed_lengths, tmp_path, capsys):
    with pytest.raises(ValueError, match="clip-order tuples cannot loop short videos"):
        load_dataset("folder", mixed_lengths, sampler=ClipTuple(3, 8, 4), on_short="loop")
    cfg = PretrainConfig(mixed_lengths, out=str(tmp_path / "pre"), task="clip_order", clip_length=8, interval=4,
                         frame_size=(24, 24), crop=16, batch_size=2, iters=1, val_videos=0, **TINY_NET)  # fmt: skip
    with pytest.raises(ValueError, match="cannot loop"):
        pretrain(PretrainConfig(**{**cfg.__dict__, "on_short": "loop"}))
    ckpt = pretrain(cfg)  # 3 x 8 frames + 2 x 4 = 32: the 30-frame videos are skipped
    assert json.load(open(tmp_path / "pre" / "config.json"))["videos"] == {"train": 2, "val": 0, "skipped": 2}
    assert main(["eval-pretext", ckpt, mixed_lengths, "--out", str(tmp_path / "ep"), "--no-progress"]) == 0
    row = json.load(open(tmp_path / "ep" / "pretext.json"))[0]
    assert row["videos"] == 2 and row["skipped"] == 2


def test_retrieval_names_its_levels(tiny_synth, tmp_path, capsys):
    args = ["--init", "random", "--width", "0.25", "--clips", "2", "--clip-length", "8", "--frame-size", "40x40",
            "--crop", "32", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(["retrieve", tiny_synth, *args]) == 0
    levels = json.load(open(tmp_path / "results.json"))["levels"]
    assert "VCOP Tables 2-3" in levels["video"] and "VCOP Tables 2-3" in capsys.readouterr().out


def test_pretraining_on_a_given_number_of_videos(tiny_synth, tmp_path):
    cfg = PretrainConfig(tiny_synth, out=str(tmp_path), clip_length=8, frame_size=(32, 32), crop=32, batch_size=2,
                         iters=1, val_videos=0, max_videos=5, **TINY_NET)  # fmt: skip
    pretrain(cfg)
    assert json.load(open(tmp_path / "config.json"))["videos"]["train"] == 5  # of 12 (3DRotNet Table 4)


def test_pretraining_resamples_videos_in_time_without_a_cache(tiny_synth, tmp_path):
    # clip order's 3 x 16 + 2 x 8 = 64 frames do not fit 40-frame videos; resampled to 64 they do
    cfg = PretrainConfig(tiny_synth, out=str(tmp_path), task="clip_order", frame_size=(24, 24), crop=16,
                         batch_size=2, iters=1, val_videos=0, resample=64, **TINY_NET)  # fmt: skip
    pretrain(cfg)
    meta = json.load(open(tmp_path / "config.json"))
    assert meta["videos"]["train"] == 12 and meta["videos"]["skipped"] == 0 and meta["config"]["resample"] == 64


def test_a_fine_tuned_checkpoint_feeds_every_evaluation(tiny_synth, pretrained, tmp_path):
    quiet = ["--no-progress", "--workers", "0"]
    train = ["--batch-size", "4", "--test-clips", "2", "--no-tensorboard", "--frame-size", "40x40", "--crop", "32"]
    assert main(["finetune", tiny_synth, "--init", pretrained, "--out", str(tmp_path / "ft"), "--iters", "2",
                 *train, *quiet]) == 0  # fmt: skip
    ckpt = str(tmp_path / "ft" / "seed0" / "checkpoints" / "last.json")
    _, info = load_encoder(ckpt)
    assert (info.kind, info.modality, info.clip_length) == ("finetune", "rgb", 8)
    assert (info.frame_size, info.crop) == ((40, 40), 32)
    # no preprocessing flags: the checkpoint's are used
    assert main(["retrieve", tiny_synth, "--init", ckpt, "--clips", "2", "--out", str(tmp_path / "rt"), *quiet]) == 0
    from vidssl.features import load_features

    _, _, made = load_features(str(tmp_path / "rt" / "features_query.safetensors"))
    assert (made["clip_length"], made["frame_size"], made["crop"]) == (8, [40, 40], 32)
    assert main(["probe", tiny_synth, "--init", ckpt, "--clips", "2", "--k", "3", "--out", str(tmp_path / "pr"),
                 *quiet]) == 0  # fmt: skip
    assert main(["finetune", tiny_synth, "--init", ckpt, "--out", str(tmp_path / "ft2"), "--iters", "1", *train,
                 *quiet]) == 0  # fmt: skip


def test_attention_of_a_dif_model_on_its_rotation_set(tiny_synth, tmp_path):
    from vidssl.visualize import attention_angles

    cfg = PretrainConfig(tiny_synth, out=str(tmp_path / "dif"), modality="dif", rotations="0,90", clip_length=8,
                         frame_size=(32, 32), crop=32, batch_size=4, iters=1, val_videos=0, **TINY_NET)  # fmt: skip
    ckpt = pretrain(cfg)
    _, enc = load_encoder(ckpt)
    assert enc.modality == "dif" and attention_angles(enc) == (0, 90)
    video = os.path.join(tiny_synth, "UCF-101", sorted(os.listdir(os.path.join(tiny_synth, "UCF-101")))[0])
    video = os.path.join(video, sorted(os.listdir(video))[0])
    out = tmp_path / "pics"
    assert main(["visualize", "attention", ckpt, "--video", video, "--frame-size", "32x32", "--clip-length", "8",
                 "--out", str(out)]) == 0  # fmt: skip
    assert open(out / "attention.png", "rb").read(4) == b"\x89PNG"


def test_finetune_on_a_kinetics_layout_tests_on_val(tiny_synth, tmp_path):
    root = tmp_path / "kin"
    src = os.path.join(tiny_synth, "UCF-101")
    for cls in sorted(os.listdir(src)):
        videos = sorted(os.listdir(os.path.join(src, cls)))
        for subset, names in (("train", videos[:4]), ("val", videos[4:])):
            os.makedirs(root / subset / cls)
            for n in names:
                shutil.copy(os.path.join(src, cls, n), root / subset / cls / n.replace(".avi", ".mp4"))
    args = ["--backbone", "r3d_10", "--width", "0.25", "--clip-length", "8", "--frame-size", "32x32", "--crop", "32",
            "--iters", "1", "--batch-size", "4", "--test-clips", "1", "--workers", "0", "--no-tensorboard"]  # fmt: skip
    assert main(["finetune", str(root), *args, "--no-progress", "--out", str(tmp_path / "ft")]) == 0
    assert json.load(open(tmp_path / "ft" / "results.json"))["runs"][0]["videos"] == 6


def test_spreads_are_sample_standard_deviations():
    s = summarize([0.2, 0.4])
    assert s["mean"] == pytest.approx(0.3) and s["std"] == pytest.approx(math.sqrt(0.02))  # n - 1, not n
    assert summarize([0.5])["std"] == 0.0


def test_finetune_presets_vcop_and_3drotnet(tiny_synth, pretrained, tmp_path, capsys):
    from vidssl.config import FinetuneConfig, preset

    assert FinetuneConfig("d", **preset("finetune", "3drotnet")) == FinetuneConfig("d")  # 3DRotNet's = the defaults
    assert main(["finetune", "d", "--preset", "vcop", "--batch-size", "4", "--print-config"]) == 0
    vcop = yaml.safe_load(capsys.readouterr().out)
    assert (vcop["frame_size"], vcop["flip"], vcop["lr"], vcop["epochs"]) == ([128, 171], 0.0, 0.001, 150)
    assert vcop["batch_size"] == 4 and vcop["val_videos"] is None and vcop["test_checkpoint"] == "best"
    assert main(["finetune", "d", "--preset", "vcp"]) == 2
    assert "finetune has no preset 'vcp'; choose one of 3drotnet, vcop" in capsys.readouterr().err
    out = tmp_path / "ft"
    args = ["--preset", "vcop", "--init", pretrained, "--frame-size", "40x40", "--crop", "32", "--batch-size", "4",
            "--iters", "6", "--test-clips", "1", "--workers", "0", "--no-progress", "--no-tensorboard"]  # fmt: skip
    assert main(["finetune", tiny_synth, *args, "--out", str(out)]) == 0
    run = json.load(open(out / "results.json"))["runs"][0]
    best = json.load(open(out / "seed0" / "checkpoints" / "best.json"))
    # 12 training videos: VCOP's 800 capped at 10%, so 1 is held out; the best checkpoint is tested
    assert run["val_videos"] == 1 and run["train_videos"] == 11
    assert run["tested"]["checkpoint"] == "best" and run["tested"]["step"] == best["step"]
    assert main(["finetune", tiny_synth, *args, "--val-videos", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--test-checkpoint best needs validation videos" in capsys.readouterr().err


def _image_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per clip: variance, gradient and Laplacian energy, mean magnitude, and directional gradient
    contrasts (axis against axis, diagonal against axis, diagonal against diagonal)."""
    x = x.mean(1)
    e = lambda d: d.square().mean(dim=(1, 2, 3))
    dx, dy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    dd, da = x[..., 1:, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, 1:]
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return torch.stack([x.var(dim=(1, 2, 3)), e(dx) + e(dy), e(lap), x.abs().mean(dim=(1, 2, 3)), e(dx) - e(dy),
                        e(dd) + e(da) - e(dx) - e(dy), e(dd) - e(da)], 1)  # fmt: skip


@pytest.mark.parametrize("noise", ["white", "smooth"])
def test_resampled_rotations_leave_no_trace_of_their_angle(noise):
    """8-way: 0/90/180/270 were exact and 45/135/... blurred; a linear classifier on image
    statistics told them apart 96-100% of the time. Now every angle is resampled alike."""
    from vidssl.probe import linear_probe
    from vidssl.tasks import RotationTask

    task = RotationTask(16, "8way")
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(150, 3, 2, 64, 64, generator=g)
    if noise == "smooth":
        clips = torch.nn.functional.avg_pool3d(clips, (1, 3, 3), 1, (0, 1, 1))
    x, y = task.make_batch(clips, g)  # every clip at every angle: 1,200 inputs
    stats = _image_statistics(x)
    perm = torch.randperm(len(y), generator=g)
    a, b = perm[: len(y) // 2], perm[len(y) // 2 :]
    eight = (linear_probe(stats[a], y[a], stats[b], 8) == y[b]).float().mean().item()
    diagonal = (linear_probe(stats[a], y[a] % 2, stats[b], 2) == y[b] % 2).float().mean().item()
    assert eight < 0.125 + 0.06 and diagonal < 0.5 + 0.08, (eight, diagonal)  # chance, within ~3 std


def test_regression_inputs_are_band_limited_alike():
    from vidssl.tasks import RotationTask

    g = torch.Generator().manual_seed(1)
    x, _ = RotationTask(16, "360").make_batch(torch.randn(8, 3, 2, 64, 64, generator=g), g)
    spectrum = torch.fft.rfft2(x).abs().square()
    h, w = x.shape[-2:]
    r = ((torch.fft.rfftfreq(w) * 2).view(1, -1) ** 2 + (torch.fft.fftfreq(h).abs() * 2).view(-1, 1) ** 2).sqrt()
    assert spectrum[..., r > 0.6].sum() < 0.02 * spectrum.sum()  # (crop edges leak a little)
