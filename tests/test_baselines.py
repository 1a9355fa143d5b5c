"""Person-disjoint manifest datasets (the Weizmann actions) and the batch-norm control baseline."""

import os
import shutil

import pytest
import torch
from conftest import SHARED_DATA

from vidssl import backbones
from vidssl.cli import main
from vidssl.data.datasets import detect_kind, load_dataset
from vidssl.data.sampling import UniformClips
from vidssl.data.transforms import eval_transform
from vidssl.features import recalibrate_batchnorm

WEIZMANN = os.path.join(SHARED_DATA, "weizmann")
needs_weizmann = pytest.mark.skipif(not os.path.isdir(WEIZMANN), reason="../shared/data/weizmann is absent")


@pytest.fixture
def small_weizmann(tmp_path):
    """Three actions of the real Weizmann set, all 9 persons (27 clips), with its manifest."""
    import csv

    if not os.path.isdir(WEIZMANN):
        pytest.skip("../shared/data/weizmann is absent")
    root = tmp_path / "weizmann"
    rows = [
        r
        for r in csv.DictReader(open(os.path.join(WEIZMANN, "manifest.csv")))
        if r["label"] in ("bend", "jack", "walk")
    ]
    for r in rows:
        os.makedirs(root / r["label"], exist_ok=True)
        shutil.copy(os.path.join(WEIZMANN, r["path"]), root / r["path"])
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "person"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return str(root)


def test_manifest_folds_are_person_disjoint_and_cover_every_clip(small_weizmann):
    assert detect_kind(small_weizmann) == "manifest"
    tests = []
    for split in (1, 2, 3):
        train = load_dataset("auto", small_weizmann, split=split, subset="train", sampler=UniformClips(1, 8))
        test = load_dataset("auto", small_weizmann, split=split, subset="test", sampler=UniformClips(1, 8))
        assert len(train) == 18 and len(test) == 9 and train.classes == test.classes == ["bend", "jack", "walk"]
        assert not {r.group for r in train.records} & {r.group for r in test.records}  # never a person in both
        assert len({r.group for r in test.records}) == 3
        for r in test.records:  # labels are the manifest's
            assert test.classes[r.label] == r.rel.split("/")[0]
        tests += [r.rel for r in test.records]
    assert sorted(tests) == sorted(r.rel for r in load_dataset("manifest", small_weizmann, subset="all").records)


def test_a_manifest_without_persons_is_one_line(tmp_path, capsys):
    (tmp_path / "manifest.csv").write_text("path,label\na/x.avi,a\n")
    assert main(["stats", str(tmp_path)]) == 2
    assert "needs the columns path, label, person (missing: person)" in capsys.readouterr().err


def test_batchnorm_recalibration_measures_the_training_clips(tiny_synth):
    torch.manual_seed(0)
    net = backbones.build("r3d_10", 0.25)
    ds = load_dataset("auto", tiny_synth, subset="train", sampler=UniformClips(2, 8), transform=eval_transform(32),
                      size=(40, 40))  # fmt: skip
    first = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    means = []
    hook = first.register_forward_hook(lambda m, inp, out: means.append(inp[0].mean(dim=(0, 2, 3, 4))))
    seen = recalibrate_batchnorm(net, ds, batch_size=4, progress=False)
    hook.remove()
    assert seen == 2 * len(ds)
    # the running mean is the mean of the batch means (momentum None), not zeros (random init)
    assert torch.allclose(first.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert first.running_mean.abs().sum() > 0 and first.momentum == 0.1 and not net.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # weights unchanged


def test_retrieve_with_bn_stats_train_records_it_and_changes_the_features(tiny_synth, tmp_path):
    import json

    from safetensors.torch import load_file

    common = ["retrieve", tiny_synth, "--width", "0.25", "--frame-size", "40x40", "--crop", "32", "--clips", "2",
              "--clip-length", "8", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--bn-stats", "train"]) == 0
    fa = load_file(str(tmp_path / "a" / "features_query.safetensors"))["features"]
    fb = load_file(str(tmp_path / "b" / "features_query.safetensors"))["features"]
    assert fa.shape == fb.shape and not torch.allclose(fa, fb)
    assert json.load(open(tmp_path / "b" / "results.json"))["source"]["bn_stats"] == "train"


def test_the_random_baseline_of_a_dif_network_reads_frame_differences(tiny_synth, pretrained, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    common = ["retrieve", tiny_synth, "--width", "0.25", "--frame-size", "40x40", "--crop", "32", "--clips", "2",
              "--clip-length", "8", "--no-progress"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "rgb")]) == 0
    assert main([*common, "--out", str(tmp_path / "dif"), "--modality", "dif"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "dif" / "features_query.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["meta"])["modality"] == "dif"
    a = load_file(str(tmp_path / "rgb" / "features_query.safetensors"))["features"]
    b = load_file(str(tmp_path / "dif" / "features_query.safetensors"))["features"]
    assert not torch.allclose(a, b)
    # a checkpoint trained on RGB is never fed frame differences
    assert main(["retrieve", tiny_synth, "--init", pretrained, "--modality", "dif", "--out", str(tmp_path / "x")]) == 2
    assert "trained on rgb input; --modality dif would feed it another" in capsys.readouterr().err


def test_validation_splits_hold_out_training_persons_only(small_weizmann):
    """Splits 4..6 choose settings without the test persons: split 3+k uses only split k's training
    persons and tests on a third of them."""
    load = lambda split, subset: load_dataset(
        "auto", small_weizmann, split=split, subset=subset, sampler=UniformClips(1, 8)
    )
    for k in (1, 2, 3):
        persons = lambda ds: {r.group for r in ds.records}
        train, test = persons(load(k, "train")), persons(load(k, "test"))
        vtrain, vtest = persons(load(k + 3, "train")), persons(load(k + 3, "test"))
        assert vtrain | vtest == train and not vtrain & vtest and not (vtrain | vtest) & test
        assert len(vtest) == 2 and len(vtrain) == 4
    with pytest.raises(ValueError, match="validation splits"):
        load(7, "train")


def test_the_random_label_control_trains_on_targets_that_say_nothing(tiny_synth, tmp_path):
    """The control's targets are drawn from the generator alone: the same for any clips, new every
    step; its held-out loss stays at ln K; its checkpoint is probed like any pretraining."""
    import math

    from vidssl.config import PretrainConfig
    from vidssl.pretrain import pretrain
    from vidssl.tasks import RandomLabelTask, build_task

    task = build_task(PretrainConfig("d", task="random_labels"), 16)
    assert isinstance(task, RandomLabelTask) and len(task.angles) == 4 and task.chance == 0.25
    a, b = torch.rand(6, 3, 4, 8, 8), torch.rand(6, 3, 4, 8, 8)
    xa, ya = task.make_batch(a, torch.Generator().manual_seed(1))
    xb, yb = task.make_batch(b, torch.Generator().manual_seed(1))
    assert torch.equal(xa, a) and torch.equal(ya, yb)  # inputs untouched, labels independent of them
    assert not torch.equal(ya, task.make_batch(a, torch.Generator().manual_seed(2))[1])
    best = pretrain(PretrainConfig(tiny_synth, task="random_labels", out=str(tmp_path / "pre"), backbone="r3d_10",
                                   width=0.25, clip_length=8, frame_size=(40, 40), crop=32, batch_size=8, iters=12,
                                   lr=0.01, val_videos=4, workers=0, progress=False, tensorboard=False))  # fmt: skip
    import json

    val = json.load(open(tmp_path / "pre" / "summary.json"))["val"]
    assert abs(val["loss"] - math.log(4)) < 0.35  # nothing to learn: near chance on held-out videos
    assert main(["probe", tiny_synth, "--init", best, "--clips", "1", "--k", "3", "--out", str(tmp_path / "p"),
                 "--no-progress"]) == 0  # fmt: skip
    assert os.path.isfile(tmp_path / "p" / "probe.json")
