import itertools

import numpy as np
import pytest
import torch

from vidssl.data import transforms as T
from vidssl.data.sampling import ClipTuple, RandomClip, UniformClips, resample_indices, sample_seed


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_clip_is_consecutive_inside_the_video():
    policy = RandomClip(length=16, stride=2)
    assert policy.min_frames == 31
    starts = set()
    for s in range(50):
        idx = policy(40, g(s))
        assert idx.shape == (1, 16)
        assert (np.diff(idx[0]) == 2).all() and idx.min() >= 0 and idx.max() < 40
        starts.add(int(idx[0, 0]))
    assert len(starts) > 5  # the start really is random


def test_uniform_clips_cover_the_video():
    idx = UniformClips(num_clips=10, length=16)(100)
    assert idx.shape == (10, 16)
    assert idx[0, 0] == 0 and idx[-1, -1] == 99
    assert (np.diff(idx[:, 0]) > 0).all()


@pytest.mark.parametrize("n,length,interval", [(2, 16, 8), (3, 16, 8), (4, 8, 4), (5, 16, 0)])
def test_clip_tuple_is_non_overlapping_with_the_interval(n, length, interval):
    policy = ClipTuple(n, length, interval)
    assert policy.min_frames == n * length + (n - 1) * interval
    for s in range(10):
        idx = policy(policy.min_frames + 7, g(s))
        assert idx.shape == (n, length)
        assert (np.diff(idx, axis=1) == 1).all()  # each clip consecutive
        gaps = idx[1:, 0] - idx[:-1, -1] - 1
        assert (gaps == interval).all()  # exactly `interval` frames between clips
        assert len(set(idx.ravel())) == n * length


def test_vcop_default_tuple_needs_64_frames():
    assert ClipTuple().min_frames == 64


def test_resample_indices_even():
    np.testing.assert_array_equal(resample_indices(10, 4), [0, 3, 6, 9])
    assert len(resample_indices(300, 160)) == 160 and resample_indices(300, 160)[-1] == 299


def test_sample_seeds_are_distinct():
    seeds = {sample_seed(s, e, i) for s, e, i in itertools.product(range(3), range(3), range(50))}
    assert len(seeds) == 450


def test_spatial_transforms_apply_the_same_to_every_frame():
    clip = torch.arange(3 * 4 * 10 * 12, dtype=torch.float32).reshape(3, 4, 10, 12)
    clip = clip.to(torch.uint8)
    out = T.Compose(T.RandomCrop(6), T.RandomHorizontalFlip(1.0))(clip, g(1))
    assert out.shape == (3, 4, 6, 6)
    # find the crop offset from frame 0 and check every frame used the same one, flipped
    for top in range(5):
        for left in range(7):
            if torch.equal(out[:, 0], clip[:, 0, top : top + 6, left : left + 6].flip(-1)):
                for t in range(4):
                    assert torch.equal(out[:, t], clip[:, t, top : top + 6, left : left + 6].flip(-1))
                return
    raise AssertionError("crop not found")


def test_random_transforms_follow_the_generator():
    clip = torch.randint(0, 255, (3, 4, 20, 20), dtype=torch.uint8)
    t = T.train_transform(crop_size=8)
    assert torch.equal(t(clip, g(5)), t(clip, g(5)))
    assert any(not torch.equal(t(clip, g(5)), t(clip, g(s))) for s in range(6, 12))


def test_center_crop_resize_normalize_and_dif():
    clip = torch.full((3, 5, 16, 20), 128, dtype=torch.uint8)
    c = T.CenterCrop(8)(clip)
    assert c.shape == (3, 5, 8, 8)
    r = T.Resize((8, 10))(clip)
    assert r.shape == (3, 5, 8, 10) and r.dtype == torch.uint8 and (r == 128).all()
    n = T.normalize(clip)
    expected = (128 / 255 - torch.tensor(T.KINETICS_MEAN)) / torch.tensor(T.KINETICS_STD)
    torch.testing.assert_close(n[:, 0, 0, 0], expected)
    x = torch.arange(5.0).view(1, 5, 1, 1).expand(3, 5, 2, 2)
    d = T.frame_difference(x)
    assert d.shape == (3, 4, 2, 2) and (d == 1).all()
    with pytest.raises(ValueError, match="larger than the frames"):
        T.CenterCrop(32)(clip)
