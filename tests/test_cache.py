import json
import os

import numpy as np
import pytest
from conftest import UCF_SAMPLE, copy_sample, needs_shared

from vidssl.data.cache import CachedVideo, CacheSpec, FrameCache
from vidssl.data.datasets import video_folder
from vidssl.data.sampling import UniformClips
from vidssl.data.video import VideoError
from vidssl.preprocess import PreprocessConfig, preprocess


def _folder_with_videos(tmp_path, make_video):
    root = tmp_path / "videos"
    make_video("videos/a/one.avi", frames=40)
    make_video("videos/b/two.mp4", frames=33, codec="libx264")
    return str(root)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_cached_clips_equal_clips_decoded_on_the_fly(tmp_path, make_video, fmt):
    root = _folder_with_videos(tmp_path, make_video)
    cache = str(tmp_path / f"cache-{fmt}")
    report = preprocess(PreprocessConfig(root, cache, format=fmt, size=(24, 32), workers=1, progress=False))
    assert report["written_now"] == 2 and report["skipped"] == 0
    policy = UniformClips(num_clips=3, length=16)
    live = video_folder(root, sampler=policy, size=(24, 32))
    cached = video_folder(root, sampler=policy, cache=cache)
    assert len(live) == len(cached) == 2
    for i in range(2):
        a, la = live[i]
        b, lb = cached[i]
        assert a.shape == b.shape == (3, 3, 16, 24, 32) and la == lb == -1
        if fmt == "raw":
            assert np.array_equal(a.numpy(), b.numpy())  # identical, bit for bit
        else:  # JPEG is lossy: close, not equal
            assert (a.float() - b.float()).abs().mean() < 4.0


def test_resample_is_the_same_cached_and_live(tmp_path, make_video):
    root = _folder_with_videos(tmp_path, make_video)
    cache = str(tmp_path / "cache")
    preprocess(PreprocessConfig(root, cache, format="raw", size=None, resample=20, workers=1, progress=False))
    policy = UniformClips(num_clips=2, length=8)
    live = video_folder(root, sampler=policy, resample=20)
    cached = video_folder(root, sampler=policy, cache=cache)
    assert live.num_frames == cached.num_frames == [20, 20]
    for i in range(2):
        assert np.array_equal(live[i][0].numpy(), cached[i][0].numpy())


def test_preprocess_resumes_and_reports_bad_videos(tmp_path, make_video):
    root = _folder_with_videos(tmp_path, make_video)
    (tmp_path / "videos" / "a" / "broken.avi").write_text("not a video")
    cache = str(tmp_path / "cache")
    cfg = PreprocessConfig(root, cache, workers=2, progress=False)
    first = preprocess(cfg)
    assert (first["written_now"], first["skipped"]) == (2, 1)
    skipped = json.load(open(os.path.join(cache, "skipped.json")))
    assert list(skipped) == [os.path.join("a", "broken.avi")] and "not a readable video" in skipped["a/broken.avi"]
    os.remove(os.path.join(cache, "b", "two.mp4.jpgs"))  # as if the run had been interrupted
    second = preprocess(cfg)
    assert (second["written_now"], second["already_cached"], second["skipped"]) == (1, 1, 1)
    assert not [f for _, _, fs in os.walk(cache) for f in fs if ".tmp" in f]


def test_cache_settings_are_checked(tmp_path, make_video):
    root = _folder_with_videos(tmp_path, make_video)
    cache = str(tmp_path / "cache")
    preprocess(PreprocessConfig(root, cache, size=(24, 32), workers=1, progress=False))
    with pytest.raises(ValueError, match="made with"):
        preprocess(PreprocessConfig(root, cache, size=(48, 64), workers=1, progress=False))
    with pytest.raises(ValueError, match="cache holds size"):
        video_folder(root, cache=cache, size=(48, 64))
    with pytest.raises(FileNotFoundError, match="not a frame cache"):
        FrameCache.open(str(tmp_path))


def test_corrupt_cache_entry_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.avi.jpgs"
    bad.write_bytes(b"garbage" * 3)
    with pytest.raises(VideoError, match="damaged cache entry"):
        CachedVideo(str(bad), "jpeg")


@needs_shared
def test_real_clip_cache_round_trip(tmp_path):
    root = tmp_path / "real"
    copy_sample(os.path.join(UCF_SAMPLE, "BenchPress", "v_BenchPress_g01_c05.avi"), root)
    cache = str(tmp_path / "cache")
    spec = CacheSpec()
    preprocess(PreprocessConfig(str(root), cache, workers=1, progress=False))
    ds_live = video_folder(str(root), sampler=UniformClips(2, 16), size=spec.size)
    ds_cache = video_folder(str(root), sampler=UniformClips(2, 16), cache=cache)
    a, b = ds_live[0][0].float(), ds_cache[0][0].float()
    assert a.shape == b.shape == (2, 3, 16, 128, 171)
    assert (a - b).abs().mean() < 3.0
