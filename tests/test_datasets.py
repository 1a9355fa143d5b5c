import os
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import TINY
from torch.utils.data import DataLoader

from vidssl.data.datasets import detect_kind, load_dataset, ucf101, video_folder
from vidssl.data.sampling import ClipTuple, RandomClip, UniformClips
from vidssl.data.splits import SplitError
from vidssl.data.synth import CLASSES, split_test_groups, split_train_groups
from vidssl.data.transforms import train_transform


def test_synthetic_dataset_loads_through_the_ucf101_loader(tiny_synth):
    assert detect_kind(tiny_synth) == "ucf101"
    names = list(CLASSES)[: TINY.classes]
    for split in (1, 2, 3):
        tr = ucf101(tiny_synth, split, "train")
        te = ucf101(tiny_synth, split, "test")
        assert tr.classes == te.classes == names
        assert len(tr) + len(te) == TINY.classes * TINY.groups * TINY.clips
        assert not tr.skipped and not te.skipped
        # labels agree with the class folder of every video
        for ds in (tr, te):
            for r in ds.records:
                assert names[r.label] == r.rel.split("/")[0]
        # group-disjoint, and the test groups are UCF101's blocks
        train_groups = {r.group for r in tr.records}
        test_g = {r.group for r in te.records}
        assert not train_groups & test_g
        assert test_g == {f"g{k:02d}" for k in split_test_groups(TINY.groups, split)}
        assert Counter(te.labels) == {c: len(test_g) * TINY.clips for c in range(TINY.classes)}


def test_ucf101_grouping_of_test_splits():
    assert split_test_groups(25, 1) == list(range(1, 8))
    assert split_test_groups(25, 2) == list(range(8, 15))
    assert split_test_groups(25, 3) == list(range(15, 22))


def test_the_embedded_validation_split_never_holds_a_split1_test_group(tiny_synth, tmp_path):
    """Split 4 is where the demo's settings may be chosen: split 2's test block, trained on the groups
    outside blocks 1 and 2, so none of split 1's test groups is in it, not even as training videos."""
    assert split_test_groups(25, 4) == list(range(8, 15)) and split_train_groups(25, 4) == list(range(15, 26))
    assert split_train_groups(25, 1) == list(range(8, 26))
    tr, te = ucf101(tiny_synth, 4, "train"), ucf101(tiny_synth, 4, "test")  # 3 groups: tests g02, trains g03
    split1_test = {r.group for r in ucf101(tiny_synth, 1, "test").records}
    assert {r.group for r in te.records} == {"g02"} and {r.group for r in tr.records} == {"g03"}
    assert not split1_test & ({r.group for r in tr.records} | {r.group for r in te.records})
    lists = tmp_path / "ucfTrainTestlist"  # a real UCF101 has no split 4: said, not a missing-file trace
    lists.mkdir()
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        (lists / name).write_text(open(os.path.join(tiny_synth, "ucfTrainTestlist", name)).read())
    with pytest.raises(SplitError, match="no trainlist04.txt; split 4 .* exists only in the embedded dataset"):
        ucf101(os.path.join(tiny_synth, "UCF-101"), 4, "train", splits_dir=str(lists))


def test_clips_have_the_asked_shape_and_are_deterministic(tiny_synth):
    def make(seed):
        return ucf101(tiny_synth, 1, "train", sampler=RandomClip(8), transform=train_transform(32), seed=seed)

    a, b, c = make(0), make(0), make(1)
    clip, label = a[2]
    assert clip.shape == (3, 8, 32, 32) and clip.dtype == torch.uint8
    assert torch.equal(a[2][0], b[2][0])  # same seed, same clip
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(len(a)))  # another seed, other clips
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))  # another epoch, other clips


def test_workers_do_not_change_the_clips(tiny_synth):
    ds = ucf101(tiny_synth, 1, "train", sampler=RandomClip(8), transform=train_transform(32), seed=4)
    serial = torch.cat([x for x, _ in DataLoader(ds, batch_size=4)])
    parallel = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(serial, parallel)


def test_multi_clip_policies_give_stacked_clips(tiny_synth):
    ds = ucf101(tiny_synth, 1, "test", sampler=ClipTuple(2, 8, 4), transform=train_transform(32))
    clip, _ = ds[0]
    assert clip.shape == (2, 3, 8, 32, 32)
    ds = ucf101(tiny_synth, 1, "test", sampler=UniformClips(5, 8))
    clip, _ = ds[0]
    assert clip.shape == (5, 3, 8, TINY.height, TINY.width)
    # the uniform clips are the frames at the policy's indices
    full = ds.read(0, np.arange(TINY.frames))
    idx = UniformClips(5, 8)(TINY.frames)
    np.testing.assert_array_equal(clip[3].permute(1, 2, 3, 0).numpy(), full[idx[3]])
    # one test clip is still a stack of one (finetune --test-clips 1 once crashed on a missing K axis)
    ds = ucf101(tiny_synth, 1, "test", sampler=UniformClips(1, 8))
    assert ds[0][0].shape == (1, 3, 8, TINY.height, TINY.width)


def test_too_short_for_the_tuple_is_skipped_never_looped(tiny_synth):
    policy = ClipTuple(3, 16, 8)  # needs 64 frames; the tiny videos have 40
    ds = ucf101(tiny_synth, 1, "test", sampler=policy)
    assert len(ds) == 0 and len(ds.skipped) == 6
    with pytest.raises(ValueError, match="cannot loop short videos"):  # looped clips would share frames
        ucf101(tiny_synth, 1, "test", sampler=policy, on_short="loop")
    looped = ucf101(tiny_synth, 1, "test", sampler=RandomClip(64), on_short="loop")  # one clip may loop
    assert len(looped) == 6 and looped[0][0].shape[:2] == (3, 64)


def test_folder_and_kinetics_layouts(tmp_path, make_video):
    for split, cls, k in [("train", "jump", 1), ("train", "run", 2), ("val", "run", 3)]:
        make_video(f"kin/{split}/{cls}/clip{k}.mp4", frames=20, codec="libx264")
    kin = str(tmp_path / "kin")
    assert detect_kind(kin) == "kinetics"
    tr = load_dataset("auto", kin, subset="train")
    va = load_dataset("kinetics", kin, subset="val")
    assert tr.classes == va.classes == ["jump", "run"]
    assert tr.labels == [0, 1] and va.labels == [1]
    folder = video_folder(kin)
    assert len(folder) == 3 and set(folder.labels) == {-1}
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no video files"):
        video_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("imagenet", kin)


def test_select_copies_without_probing_again(tiny_synth):
    ds = ucf101(tiny_synth, 1, "train", sampler=RandomClip(8), transform=train_transform(32))
    sub = ds.select([2, 0], transform=None, seed=9)
    assert [r.rel for r in sub.records] == [ds.records[2].rel, ds.records[0].rel]
    assert sub.num_frames == [ds.num_frames[2], ds.num_frames[0]] and len(ds) == 12
    assert sub[0][0].shape == (3, 8, TINY.height, TINY.width) and ds.transform is not None
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        ds.select([0], colour=1)
