"""Fault injection: a dataset of good videos plus one of every fault a real collection has.

Pretraining, fine-tuning and retrieval must finish, skip exactly the bad entries (one warning line
each, counted in their summaries) and give the results of a run on the good videos alone.
"""

import fractions
import json
import logging
import os
import shutil

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidssl.data.datasets import ucf101
from vidssl.data.synth import SynthConfig, generate
from vidssl.data.video import VideoError, probe, read_frames, write_video
from vidssl.finetune import FinetuneConfig, finetune
from vidssl.pretrain import PretrainConfig, pretrain
from vidssl.retrieval import RetrieveConfig, retrieve

# 3 classes x 3 groups x 2 clips; split 1 tests on group 1: 12 train, 6 test videos.
BASE = SynthConfig(classes=3, groups=3, clips=2, frames=40, height=48, width=64, seed=5)
SMALL = dict(backbone="r3d_10", width=0.25, frame_size=(40, 40), crop=32, workers=0, progress=False, tensorboard=False)


def _encode(path, frames, codec="mpeg4", pix_fmt="yuv420p", container=None, pts=None, time_base=None):
    """Write frames (T, H, W, 3) with a chosen codec/pixel format, optionally with explicit timestamps."""
    t, h, w, _ = frames.shape
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def _frames(n, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def _damage_later_frames(src, dst, fill=0xAB, keep=0):
    """Overwrite every 6th packet from the 3rd, but its first ``keep`` bytes, with ``fill`` bytes:
    the file probes whole (its packets are all there), but decoding fails at them (0xAB: the
    decoder raises; 0x00 after the 4-byte start code: it drops the frame without a word)."""
    data = bytearray(open(src, "rb").read())
    with av.open(src) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size > 0]
    for pos, size in packets[3::6]:
        data[pos + keep : pos + size] = bytes([fill]) * (size - keep)
    open(dst, "wb").write(bytes(data))


def _lists(root):
    return os.path.join(root, "ucfTrainTestlist")


def _append(path, lines):
    with open(path, "a") as f:
        f.writelines(f"{line}\r\n" for line in lines)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(good, faulty, bad train entries, bad test entries): faulty = good + one of every fault."""
    base = tmp_path_factory.mktemp("faults")
    good = str(base / "good")
    generate(good, BASE, progress=False)
    with open(os.path.join(_lists(good), "classInd.txt")) as f:
        classes = [line.split()[1] for line in f if line.strip()]
    # A class listed in classInd.txt that the faulty copy names videos of, without a folder.
    _append(os.path.join(_lists(good), "classInd.txt"), [f"{len(classes) + 1} Ghost"])
    a, b = classes[0], classes[1]
    videos = os.path.join(good, "UCF-101")
    # Unusual but valid videos, in both copies: they must be read, not skipped.
    _encode(os.path.join(videos, a, f"v_{a}_g02_c07.avi"), _frames(40, seed=1), codec="ffv1", pix_fmt="gray")
    _encode(
        os.path.join(videos, b, f"v_{b}_g02_c07.avi"), _frames(40, 97, 161, seed=2), codec="ffv1", pix_fmt="yuv444p"
    )
    tb = fractions.Fraction(1, 1000)
    vfr = np.cumsum(np.random.default_rng(3).choice([20, 40, 80], 40))  # 12.5-50 fps
    _encode(
        os.path.join(videos, a, f"v_{a}_g03_c07.mkv"), _frames(40, seed=3), container="matroska", pts=vfr, time_base=tb
    )
    write_video(os.path.join(videos, b, f"v_{b}_g03_c07.avi"), _frames(1, seed=4))  # one frame
    write_video(os.path.join(videos, a, f"v_{a}_g03_c08.avi"), _frames(20, seed=5))  # too short for a tuple
    extra = [f"{a}/v_{a}_g02_c07.avi 1", f"{b}/v_{b}_g02_c07.avi 2", f"{a}/v_{a}_g03_c07.mkv 1"]
    extra += [f"{b}/v_{b}_g03_c07.avi 2", f"{a}/v_{a}_g03_c08.avi 1"]
    _append(os.path.join(_lists(good), "trainlist01.txt"), extra)

    faulty = str(base / "faulty")
    shutil.copytree(good, faulty)
    fv = os.path.join(faulty, "UCF-101")
    sample = os.path.join(fv, a, f"v_{a}_g02_c01.avi")
    open(os.path.join(fv, a, f"v_{a}_g04_c01.avi"), "wb").close()  # zero bytes
    open(os.path.join(fv, a, f"v_{a}_g04_c04.avi"), "wb").close()  # zero bytes, a test entry
    open(os.path.join(fv, a, f"v_{a}_g04_c02.avi"), "w").write("a text file renamed .avi\n" * 40)
    data = open(sample, "rb").read()
    open(os.path.join(fv, b, f"v_{b}_g04_c01.avi"), "wb").write(data[: len(data) // 3])  # truncated
    _damage_later_frames(sample, os.path.join(fv, b, f"v_{b}_g04_c02.avi"))
    bad_train = {
        f"{a}/v_{a}_g04_c01.avi 1": "empty file",
        f"{a}/v_{a}_g04_c02.avi 1": "not a readable video",
        f"{b}/v_{b}_g04_c01.avi 2": "truncated",
        f"{b}/v_{b}_g04_c09.avi 2": "not found",  # named, never there
        f"{a}/v_{a}_g04_c03.avi": "expected '<Class>/<video>.avi <label>'",  # malformed line
        f"Ghost/v_Ghost_g04_c01.avi {len(classes) + 1}": "class folder is missing",
        "../../etc/passwd 1": "leaves the dataset folder",
    }
    bad_test = {
        f"{b}/v_{b}_g04_c02.avi": "decoding failed",  # probes whole; fails when read
        f"{a}/v_{a}_g04_c04.avi": "empty file",
    }
    _append(os.path.join(_lists(faulty), "trainlist01.txt"), list(bad_train))
    _append(os.path.join(_lists(faulty), "testlist01.txt"), list(bad_test))
    return good, faulty, bad_train, bad_test


def test_the_faults_are_what_they_claim(datasets):
    good, faulty, _, bad_test = datasets
    found = {p: os.path.join(d, p) for d, _, ps in os.walk(os.path.join(good, "UCF-101")) for p in ps}
    by_end = lambda end: [v for k, v in found.items() if k.endswith(end)]
    gray, odd = sorted(by_end("_g02_c07.avi"), key=lambda v: probe(v).width)
    assert (probe(gray).width, probe(odd).width, probe(odd).height) == (64, 161, 97)
    assert read_frames(gray).shape == (40, 48, 64, 3)  # one grey plane read as RGB
    with av.open(gray) as c:
        assert c.streams.video[0].format.name == "gray"
    (vfr,) = by_end(".mkv")
    assert probe(vfr).num_frames == 40 and read_frames(vfr, 30, 10).shape == (10, 48, 64, 3)
    assert [probe(v).num_frames for v in by_end("_g03_c07.avi") + by_end("_g03_c08.avi")] == [1, 20]
    damaged = os.path.join(faulty, "UCF-101", next(iter(bad_test)))
    assert probe(damaged).num_frames == 40  # looks whole ...
    with pytest.raises(Exception, match="decoding failed"):  # ... until its frames are decoded
        read_frames(damaged, 16, 8)


def _warnings_naming(caplog, needle):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


def _entry_path(entry):
    return entry.split()[0]


def test_pretraining_skips_exactly_the_bad_videos_and_matches_the_good_run(datasets, tmp_path, caplog):
    good, faulty, bad_train, _ = datasets
    cfg = dict(SMALL, task="rotation", clip_length=8, batch_size=4, iters=6, lr=0.01, val_videos=2)
    pretrain(PretrainConfig(good, out=str(tmp_path / "good"), **cfg))
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        pretrain(PretrainConfig(faulty, out=str(tmp_path / "faulty"), **cfg))
    for entry, why in bad_train.items():
        said = _warnings_naming(caplog, os.path.basename(_entry_path(entry)))
        assert len(said) == 1 and why in said[0], (entry, said)
    cfg_good = json.load(open(tmp_path / "good" / "config.json"))["videos"]
    cfg_faulty = json.load(open(tmp_path / "faulty" / "config.json"))["videos"]
    assert cfg_faulty["skipped"] == cfg_good["skipped"] + len(bad_train)  # the 1-frame video: skipped in both
    assert {k: cfg_faulty[k] for k in ("train", "val")} == {k: cfg_good[k] for k in ("train", "val")}
    a = load_file(str(tmp_path / "good" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "faulty" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "the faulty dataset trained other weights"


def test_clip_order_skips_the_videos_too_short_for_its_tuple(datasets):
    good, faulty, bad_train, _ = datasets
    from vidssl.tasks import ClipOrderTask

    sampler = ClipOrderTask(32, 3, 4).sampler(8)  # 3 clips of 8 frames, 4 apart: 32 frames
    ds = ucf101(faulty, 1, "train", sampler=sampler, size=(40, 40))
    short = [why for _, why in ds.skipped if "shorter than the 32" in why]
    assert len(short) == 2  # the 20-frame and the 1-frame video
    assert len(ds.skipped) == len(bad_train) + 2 and len(ds) == len(
        ucf101(good, 1, "train", sampler=sampler, size=(40, 40))
    )


def test_finetuning_and_retrieval_match_the_good_run(datasets, tmp_path, caplog):
    good, faulty, bad_train, bad_test = datasets
    ft = dict(SMALL, init="scratch", clip_length=8, batch_size=4, iters=3, lr=0.01, test_clips=2)
    r_good = finetune(FinetuneConfig(good, out=str(tmp_path / "ft-good"), **ft))
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        r_faulty = finetune(FinetuneConfig(faulty, out=str(tmp_path / "ft-faulty"), **ft))
    damaged = os.path.basename(_entry_path(next(iter(bad_test))))
    said = _warnings_naming(caplog, damaged)
    assert len(said) == 1 and "failed mid-run" in said[0] and "decoding failed" in said[0]
    run_g, run_f = r_good["runs"][0], r_faulty["runs"][0]
    assert run_f["train_names"] == run_g["train_names"]
    assert run_f["skipped"] == {"train": run_g["skipped"]["train"] + len(bad_train), "test": len(bad_test)}
    for key in ("clip_top1", "video_top1"):
        assert run_f[key] == run_g[key]
    sg = load_file(str(tmp_path / "ft-good" / "seed0" / "scores.safetensors"))
    sf = load_file(str(tmp_path / "ft-faulty" / "seed0" / "scores.safetensors"))
    assert torch.equal(sg["clip_probs"], sf["clip_probs"])

    rt = dict(init="random", backbone="r3d_10", width=0.25, clip_length=8, clips=2, crop=32, frame_size=(40, 40))
    rt.update(progress=False, workers=0)
    g = retrieve(RetrieveConfig(good, out=str(tmp_path / "rt-good"), **rt))
    f = retrieve(RetrieveConfig(faulty, out=str(tmp_path / "rt-faulty"), **rt))
    assert f["skipped"] == {"query": len(bad_test), "gallery": g["skipped"]["gallery"] + len(bad_train)}
    for key in ("video", "clip"):
        assert f[key] == g[key]
    assert (
        open(tmp_path / "rt-good" / "neighbours.csv").read() == open(tmp_path / "rt-faulty" / "neighbours.csv").read()
    )


def test_a_video_failing_mid_training_is_left_out_warned_once_and_counted(datasets, tmp_path, caplog):
    good, faulty, _, bad_test = datasets
    root = str(tmp_path / "midrun")
    shutil.copytree(good, root)
    damaged_entry = next(iter(bad_test))
    shutil.copy(os.path.join(faulty, "UCF-101", damaged_entry), os.path.join(root, "UCF-101", damaged_entry))
    label = damaged_entry.split("/")[0]
    with open(os.path.join(_lists(root), "classInd.txt")) as f:
        index = next(line.split()[0] for line in f if line.split()[1] == label)
    _append(os.path.join(_lists(root), "trainlist01.txt"), [f"{damaged_entry} {index}"])
    cfg = dict(SMALL, task="rotation", clip_length=8, batch_size=4, iters=8, lr=0.01, val_videos=0, workers=2)
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        pretrain(PretrainConfig(root, out=str(tmp_path / "run"), **cfg))
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["steps"] == 8 and list(summary["failed_videos"]) == [os.path.join(root, "UCF-101", damaged_entry)]
    said = _warnings_naming(caplog, os.path.basename(damaged_entry))
    assert len(said) == 1 and "failed mid-run" in said[0]


def _silent_decode_count(path):
    """Frames a plain decode yields, or None if the decoder raises."""
    try:
        with av.open(path) as c:
            return sum(1 for _ in c.decode(c.streams.video[0]))
    except av.error.FFmpegError:
        return None


def test_a_frame_the_decoder_drops_silently_is_an_error_not_a_shifted_clip(datasets, tmp_path):
    good, _, _, _ = datasets
    damaged = str(tmp_path / "dropped.avi")
    videos = os.path.join(good, "UCF-101")
    sources = sorted(os.path.join(d, n) for d, _, names in os.walk(videos) for n in names if n.endswith("_c01.avi"))
    for src in sources:
        _damage_later_frames(src, damaged, fill=0x00, keep=4)
        if (_silent_decode_count(damaged) or 40) < 40:
            break  # the decoder drops the damaged frames without an error: the case to test
    else:
        pytest.skip("no source video whose damaged copy this FFmpeg decodes silently short")
    assert probe(damaged).num_frames == 40  # the packets are all there
    assert np.array_equal(read_frames(damaged, 0, 3), read_frames(src, 0, 3))  # before the first damage
    for start in (4, 13, 30):  # after a dropped frame every frame would come one place early
        with pytest.raises(VideoError):
            read_frames(damaged, start, 8)
