"""Data faults a messy real collection has, beyond bad videos (tests/test_faults.py): link loops,
hidden files, overlapping or repeated split lines, BOM and CRLF, very long names, phone rotation
metadata, and frame-cache entries that went stale or were damaged. Each test injects one."""

import logging
import os
import shutil

import av
import numpy as np
import pytest

from vidssl.cli import main
from vidssl.data.cache import FrameCache
from vidssl.data.datasets import kinetics, ucf101, video_folder
from vidssl.data.sampling import UniformClips
from vidssl.data.synth import SynthConfig, generate
from vidssl.data.video import list_videos, read_frames
from vidssl.preprocess import PreprocessConfig, preprocess

BASE = SynthConfig(classes=3, groups=3, clips=2, frames=24, height=32, width=48, seed=7)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hyg") / "d")
    generate(out, BASE, workers=1, progress=False)
    return out


def _copy(synth, tmp_path) -> str:
    dst = str(tmp_path / "d")
    shutil.copytree(synth, dst)
    return dst


def test_a_symlink_loop_lists_every_video_once(synth, tmp_path):
    root = os.path.join(_copy(synth, tmp_path), "UCF-101")
    n = len(list_videos(root))
    first = sorted(os.listdir(root))[0]
    os.symlink("..", os.path.join(root, first, "loop"))  # root/A/loop -> root
    os.symlink(os.path.join(root, first), os.path.join(root, "again"))  # a second way into one folder
    assert len(list_videos(root)) == n


def test_hidden_files_and_folders_are_not_data(synth, tmp_path):
    root = os.path.join(_copy(synth, tmp_path), "UCF-101")
    n = len(list_videos(root))
    some = os.path.join(root, sorted(os.listdir(root))[0])
    video = os.path.join(some, sorted(os.listdir(some))[0])
    for hidden in (".ipynb_checkpoints", "__MACOSX", ".trash"):
        os.makedirs(os.path.join(root, hidden))
        shutil.copy(video, os.path.join(root, hidden, "copy.avi"))
    shutil.copy(video, os.path.join(some, "._" + os.path.basename(video)))  # a macOS resource fork
    assert len(list_videos(root)) == n
    assert len(video_folder(root, sampler=UniformClips(1, 8))) == n
    # Kinetics layout: a hidden folder is not a class
    kin = tmp_path / "kin"
    for cls in ("a", "b", ".ipynb_checkpoints", "__MACOSX"):
        os.makedirs(kin / "train" / cls)
        shutil.copy(video, kin / "train" / cls / "v.avi")
    assert kinetics(str(kin), "train", sampler=UniformClips(1, 8)).classes == ["a", "b"]


def test_a_video_in_both_the_training_and_the_test_list_is_refused(synth, tmp_path):
    root = _copy(synth, tmp_path)
    lists = os.path.join(root, "ucfTrainTestlist")
    test_line = open(os.path.join(lists, "testlist01.txt")).read().split()[0]
    cls = test_line.split("/")[0]
    label = [line.split()[0] for line in open(os.path.join(lists, "classInd.txt")) if line.split()[1] == cls][0]
    with open(os.path.join(lists, "trainlist01.txt"), "a") as f:
        f.write(f"{test_line} {label}\n")
    for subset in ("train", "test"):
        with pytest.raises(ValueError, match=r"1 video\(s\) are in both the training and the test list"):
            ucf101(root, 1, subset, sampler=UniformClips(1, 8))


def test_a_repeated_split_line_is_used_once_and_counted(synth, tmp_path, caplog):
    root = _copy(synth, tmp_path)
    path = os.path.join(root, "ucfTrainTestlist", "trainlist01.txt")
    n = len(ucf101(root, 1, "train", sampler=UniformClips(1, 8)))
    lines = open(path).read().splitlines()
    with open(path, "a") as f:
        f.write("\n".join(lines[:3]) + "\n")
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        ds = ucf101(root, 1, "train", sampler=UniformClips(1, 8))
    assert len(ds) == n and len({r.rel for r in ds.records}) == n
    assert any("3 repeated line(s) ignored" in r.getMessage() for r in caplog.records)


def test_a_byte_order_mark_and_crlf_line_ends_are_read(synth, tmp_path):
    root = _copy(synth, tmp_path)
    lists = os.path.join(root, "ucfTrainTestlist")
    expect = ucf101(root, 1, "train", sampler=UniformClips(1, 8))
    for name in ("classInd.txt", "trainlist01.txt"):
        text = open(os.path.join(lists, name)).read()
        open(os.path.join(lists, name), "wb").write(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    got = ucf101(root, 1, "train", sampler=UniformClips(1, 8))
    assert got.classes == expect.classes and [r.rel for r in got.records] == [r.rel for r in expect.records]


def test_a_248_character_file_name_is_cached_under_a_shorter_name(synth, tmp_path):
    root = tmp_path / "long"
    src = os.path.join(synth, "UCF-101")
    video = os.path.join(src, sorted(os.listdir(src))[0])
    video = os.path.join(video, sorted(os.listdir(video))[0])
    name = "x" * 244 + ".avi"  # 248 characters: legal on Linux, too long with the entry's suffixes
    os.makedirs(root)
    shutil.copy(video, root / name)
    cache = str(tmp_path / "c")
    report = preprocess(PreprocessConfig(str(root), cache, size=(32, 48), workers=1, progress=False))
    assert report["written_now"] == 1 and report["skipped"] == 0
    ds = video_folder(str(root), sampler=UniformClips(1, 8), cache=cache)
    assert len(ds) == 1 and ds[0][0].shape == (1, 3, 8, 32, 48)
    assert max(len(f) for _, _, fs in os.walk(cache) for f in fs) <= 255


def _rotated_video(path, degrees):
    """A portrait phone video: frames stored sideways (64 wide, 32 high, bright on their left), with
    a display rotation of ``degrees`` counter-clockwise."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv420p"
        s.set_display_rotation(degrees)
        for _ in range(12):
            a = np.zeros((32, 64, 3), np.uint8)
            a[:, :12] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_rotation_metadata_is_applied(tmp_path):
    _rotated_video(tmp_path / "phone.mp4", 90)
    frames = read_frames(str(tmp_path / "phone.mp4"))
    assert frames.shape == (12, 64, 32, 3)  # upright: taller than wide
    assert frames[:, -12:].mean() > 200 and frames[:, :-16].mean() < 30  # the stored left is the bottom
    resized = read_frames(str(tmp_path / "phone.mp4"), size=(40, 20))
    assert resized.shape == (12, 40, 20, 3) and resized[:, -6:].mean() > 200


def _cached(synth, tmp_path):
    root = os.path.join(_copy(synth, tmp_path), "UCF-101")
    cache = str(tmp_path / "c")
    preprocess(PreprocessConfig(root, cache, size=(32, 48), workers=1, progress=False))
    return root, cache


def test_a_replaced_video_is_stale_in_the_cache_until_preprocess_redoes_it(synth, tmp_path, caplog):
    root, cache = _cached(synth, tmp_path)
    rel = sorted(list_videos(root))[0]
    n = len(list_videos(root))
    other = os.path.join(root, sorted(list_videos(root))[-1])
    shutil.copy(other, os.path.join(root, rel))  # another video under the same name
    os.utime(os.path.join(root, rel), ns=(1, 1))  # and a different modification time for sure
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        ds = video_folder(root, sampler=UniformClips(1, 8), cache=cache)
    assert len(ds) == n - 1 and "stale cache entry" in dict(ds.skipped)[rel]
    assert ds.summary()["stale_cache"] == 1
    again = preprocess(PreprocessConfig(root, cache, size=(32, 48), workers=1, progress=False))
    assert again["written_now"] == 1 and again["refreshed"] == 1
    fresh = video_folder(root, sampler=UniformClips(1, 8), cache=cache)
    assert len(fresh) == n
    live = read_frames(other, size=(32, 48))
    got = FrameCache.open(cache).video(rel).read(np.arange(4))
    assert np.abs(got.astype(int) - live[:4].astype(int)).mean() < 6  # the new video's frames


def test_damaged_cache_entries_are_skipped_named_and_counted_by_stats(synth, tmp_path, capsys):
    root, cache = _cached(synth, tmp_path)
    rels = sorted(list_videos(root))
    fc = FrameCache.open(cache)
    with open(fc.entry(rels[0]), "r+b") as f:  # cut short, as a full disk leaves a file
        f.truncate(os.path.getsize(fc.entry(rels[0])) // 2)
    ds = video_folder(root, sampler=UniformClips(1, 8), cache=cache)
    assert len(ds) == len(rels) - 1 and "damaged cache entry" in dict(ds.skipped)[rels[0]]
    assert main(["stats", root, "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "damaged_cache" in out and "makes stale and damaged entries again" in out
    # bytes damaged inside an entry of the right size: found when read, as a bad video, not a crash
    path = fc.entry(rels[1])
    data = bytearray(open(path, "rb").read())
    data[-400:] = b"\x00" * 400
    open(path, "wb").write(bytes(data))
    from vidssl.data.video import VideoError

    video = fc.video(rels[1])
    with pytest.raises(VideoError, match="damaged cache entry"):
        video.read(np.arange(video.num_frames))
