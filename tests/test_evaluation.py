import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidssl import checkpoint
from vidssl.cli import main
from vidssl.data.datasets import ucf101
from vidssl.data.sampling import UniformClips
from vidssl.data.transforms import eval_transform
from vidssl.features import extract_features
from vidssl.finetune import FinetuneConfig, few_shot_indices, finetune, score_report
from vidssl.fuse import geometric_fusion
from vidssl.probe import knn_classify, linear_probe, normalise
from vidssl.retrieval import clip_and_video_retrieval, topk_retrieval

SMALL = dict(frame_size=(40, 40), crop=32, progress=False)


def brute_force_topk(q, g, ql, gl, ks):
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(q)):
            sims = [torch.nn.functional.cosine_similarity(q[i], g[j], dim=0).item() for j in range(len(g))]
            order = sorted(range(len(g)), key=lambda j: -sims[j])[:k]
            hits += any(gl[j] == ql[i] for j in order)
        out[k] = hits / len(q)
    return out


def test_topk_retrieval_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(23, 6, generator=gen), torch.randn(40, 6, generator=gen)
    ql, gl = torch.randint(0, 4, (23,), generator=gen), torch.randint(0, 4, (40,), generator=gen)
    ks = (1, 5, 10, 20, 50)
    expected = brute_force_topk(q, g, ql, gl, ks)
    for chunk in (1, 7, 1024):  # chunking changes memory, not results
        assert topk_retrieval(q, g, ql, gl, ks, chunk=chunk) == pytest.approx(expected)
    assert expected[50] == 1.0 and expected[1] < 1.0


def test_video_level_is_the_mean_of_clips():
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(5, 3, 8, generator=gen), torch.randn(9, 3, 8, generator=gen)
    ql, gl = torch.arange(5) % 3, torch.arange(9) % 3
    res = clip_and_video_retrieval(q, g, ql, gl, ks=(1, 5))
    assert res["video"] == topk_retrieval(q.mean(1), g.mean(1), ql, gl, (1, 5))
    assert res["clip"] == topk_retrieval(
        q.flatten(0, 1), g.flatten(0, 1), ql.repeat_interleave(3), gl.repeat_interleave(3), (1, 5)
    )


def test_features_count_every_video(tiny_synth):
    from vidssl import backbones

    ds = ucf101(tiny_synth, 1, "train", sampler=UniformClips(3, 8), transform=eval_transform(32), size=(40, 40))
    model = backbones.build("r3d_10", 0.25)
    feats, labels = extract_features(model, ds, "vcop", batch_size=5, progress=False)  # 12 videos, batches 5+5+2
    assert feats.shape == (12, 3, 128) and labels.tolist() == ds.labels
    # channels_last_3d (the default) is a memory layout only: the same features, in the same order
    plain, _ = extract_features(model, ds, "vcop", batch_size=5, progress=False, channels_last=False)
    assert torch.allclose(feats, plain, atol=1e-5)


def test_few_shot_subsets():
    labels = [c for c in range(4) for _ in range(9)]
    a = few_shot_indices(labels, 5, 1.0, seed=0)
    assert sorted(labels[i] for i in a) == [c for c in range(4) for _ in range(5)]  # exactly k per class
    assert a == few_shot_indices(labels, 5, 1.0, seed=0)  # reproducible
    assert a != few_shot_indices(labels, 5, 1.0, seed=1)  # another seed, another subset
    half = few_shot_indices(labels, None, 0.5, seed=0)
    assert sorted(labels[i] for i in half) == [c for c in range(4) for _ in range(4)]  # round(9 / 2) per class


def test_score_report_and_fusion_maths():
    probs = torch.tensor([[[0.7, 0.3], [0.6, 0.4]], [[0.2, 0.8], [0.6, 0.4]], [[0.1, 0.9], [0.3, 0.7]]])
    labels = torch.tensor([0, 0, 1])
    r = score_report(probs, labels, ["a", "b"])
    assert r["video_top1"] == pytest.approx(2 / 3) and r["clip_top1"] == pytest.approx(5 / 6)
    assert r["confusion"] == [[1, 1], [0, 1]] and r["per_class"] == {"a": 0.5, "b": 1.0}
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    q = torch.tensor([[0.1, 0.9], [0.1, 0.9]])
    fused = geometric_fusion(p, q)
    expected = torch.tensor(
        [[0.5, 0.5], [(0.04**0.5) / (0.04**0.5 + 0.54**0.5), (0.54**0.5) / (0.04**0.5 + 0.54**0.5)]]
    )
    torch.testing.assert_close(fused, expected)


def test_knn_and_linear_probe_separate_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 4
    train_y, test_y = torch.arange(60) % 3, torch.arange(30) % 3
    train = centres[train_y] + torch.randn(60, 16, generator=gen)
    test = centres[test_y] + torch.randn(30, 16, generator=gen)
    assert (knn_classify(train, train_y, test, k=5) == test_y).all()
    assert (linear_probe(train, train_y, test, 3) == test_y).float().mean() > 0.95


def test_centring_makes_knn_compare_what_differs_not_the_shared_offset():
    """Raw cosine sees mostly the direction every feature shares (post-ReLU features sit far from 0):
    the test point's angle is class 1's; after centring on the training mean it is class 0's."""
    train, labels = torch.tensor([[2.0, 0.1], [4.0, 0.3]]), torch.tensor([0, 1])
    test = torch.tensor([[2.2, 0.165]])
    assert knn_classify(train, labels, test, k=1).tolist() == [1]
    for how in ("center", "standardize"):
        a, b = normalise(train, test, how)
        assert knn_classify(a, labels, b, k=1).tolist() == [0], how
    torch.testing.assert_close(normalise(train, test, "center")[1], test - train.mean(0))
    assert normalise(train, test, "none")[0] is train
    with pytest.raises(ValueError, match="choose none, center or standardize"):
        normalise(train, test, "l2")


def test_strict_loading_and_frozen_blocks(tiny_synth, pretrained, tmp_path):
    before = load_file(pretrained.replace(".json", ".safetensors"))
    cfg = FinetuneConfig(
        tiny_synth,
        init=pretrained,
        out=str(tmp_path),
        freeze_until="conv3",
        batch_size=4,
        iters=3,
        lr=0.1,
        test_clips=2,
        workers=0,
        tensorboard=False,
        **SMALL,
    )
    res = finetune(cfg)
    after = load_file(str(tmp_path / "seed0" / "checkpoints" / "last.safetensors"))
    for k, v in before.items():
        if k.startswith(("backbone.conv1.", "backbone.conv2.")):  # frozen: weights and BN statistics unchanged
            assert torch.equal(after[k], v), k
    assert not torch.equal(after["backbone.conv4.0.conv1.weight"], before["backbone.conv4.0.conv1.weight"])
    assert res["runs"][0]["videos"] == 6 and res["runs"][0]["train_videos"] == 12
    # a checkpoint whose weights are not those of the backbone it names fails with the key names
    bad = str(tmp_path / "bad")
    meta = json.load(open(pretrained))
    meta.pop("commit")  # hand-made: its weights do not come from the save that wrote this JSON
    weights = {("backbone.extra.weight" if k == "backbone.conv1.0.weight" else k): v for k, v in before.items()}
    save_file(weights, bad + ".safetensors")
    json.dump(meta, open(bad + ".json", "w"))
    with pytest.raises(
        checkpoint.CheckpointError, match=r"missing \['conv1.0.weight'\].*unexpected \['extra.weight'\]"
    ):
        finetune(FinetuneConfig(tiny_synth, init=bad + ".json", out=str(tmp_path / "x"), **SMALL))
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint of backbone 'r3d_10', not 'c3d'"):
        finetune(FinetuneConfig(tiny_synth, init=pretrained, backbone="c3d", out=str(tmp_path / "y"), **SMALL))


def test_end_to_end_commands_write_their_json(tiny_synth, pretrained, tmp_path, capsys):
    small = ["--frame-size", "40x40", "--crop", "32", "--no-progress"]
    ft = str(tmp_path / "ft")
    assert (
        main(
            [
                "finetune",
                tiny_synth,
                "--init",
                pretrained,
                "--out",
                ft,
                "--batch-size",
                "4",
                "--iters",
                "2",
                "--shots",
                "2",
                "--seeds",
                "0,1",
                "--test-clips",
                "2",
                "--workers",
                "0",
                "--no-tensorboard",
                *small,
            ]
        )
        == 0
    )
    res = json.load(open(os.path.join(ft, "results.json")))
    assert [r["seed"] for r in res["runs"]] == [0, 1] and all(r["train_videos"] == 6 for r in res["runs"])
    assert set(res["summary"]["video_top1"]) == {"mean", "std", "values"}
    assert main(["fuse", os.path.join(ft, "seed0"), os.path.join(ft, "seed1")]) == 0
    assert set(json.load(open(os.path.join(ft, "seed0", "fusion.json")))) >= {"a", "b", "fused"}
    rt = str(tmp_path / "rt")
    assert main(["retrieve", tiny_synth, "--init", pretrained, "--out", rt, "--clips", "2", *small]) == 0
    r = json.load(open(os.path.join(rt, "results.json")))
    assert r["query_videos"] == 6 and r["gallery_videos"] == 12 and set(r["clip"]) == {"1", "5", "10", "20", "50"}
    assert os.path.isfile(os.path.join(rt, "features_query.safetensors"))
    assert main(["retrieve", tiny_synth, "--init", pretrained, "--out", rt, "--clips", "2", *small]) == 0  # cached
    cross = str(tmp_path / "cross")
    assert (
        main(
            [
                "retrieve",
                tiny_synth,
                "--gallery",
                tiny_synth,
                "--init",
                pretrained,
                "--out",
                cross,
                "--clips",
                "2",
                "--neighbours",
                "3",
                *small,
            ]
        )
        == 0
    )
    lines = open(os.path.join(cross, "neighbours.csv")).read().splitlines()
    assert lines[0].startswith("query,query_class,rank,neighbour") and len(lines) == 1 + 6 * 3
    ep = str(tmp_path / "ep")
    ckdir = os.path.dirname(pretrained)
    assert main(["eval-pretext", ckdir, tiny_synth, "--out", ep]) == 0
    rows = json.load(open(os.path.join(ep, "pretext.json")))
    assert [r["step"] for r in rows] == [2, 4] and all(0 <= r["pretext_acc"] <= 1 for r in rows)
    pr = str(tmp_path / "pr")
    assert main(["probe", tiny_synth, "--init", pretrained, "--out", pr, "--clips", "2", "--k", "3", *small]) == 0
    p = json.load(open(os.path.join(pr, "probe.json")))
    assert 0 <= p["linear_top1"] <= 1 and 0 <= p["knn_top1"] <= 1 and p["test_videos"] == 6
    # conv5 max-pooled (VCOP's feature) instead of the pooled vector: a larger vector, same protocol
    pv = str(tmp_path / "pv")
    vcop = ["--clips", "2", "--k", "3", "--feature", "vcop", *small]
    assert main(["probe", tiny_synth, "--init", pretrained, "--out", pv, *vcop]) == 0
    v = json.load(open(os.path.join(pv, "probe.json")))
    assert v["config"]["feature"] == "vcop" and v["feature_dim"] % p["feature_dim"] == 0
    mean, top = (load_file(os.path.join(d, "features_query.safetensors"))["features"] for d in (pr, pv))
    assert (top >= mean - 1e-6).all() and not torch.allclose(top, mean)  # max over positions, not their mean
    # k-NN on centred features: the same features, compared after subtracting the training mean
    pc = str(tmp_path / "pc")
    assert (
        main(
            [
                "probe",
                tiny_synth,
                "--init",
                pretrained,
                "--out",
                pc,
                "--clips",
                "2",
                "--k",
                "3",
                "--knn-norm",
                "center",
                *small,
            ]
        )
        == 0
    )
    c = json.load(open(os.path.join(pc, "probe.json")))
    gal, qry = (load_file(os.path.join(pr, f"features_{t}.safetensors")) for t in ("gallery", "query"))
    a, b = normalise(gal["features"].mean(1), qry["features"].mean(1), "center")
    expect = (knn_classify(a, gal["labels"], b, k=3, num_classes=3) == qry["labels"]).float().mean().item()
    assert c["knn_top1"] == pytest.approx(expect) and c["linear_top1"] == p["linear_top1"]


def test_finetune_resume_equals_an_uninterrupted_run(tiny_synth, pretrained, tmp_path):
    common = dict(init=pretrained, batch_size=4, lr=0.05, test_clips=2, workers=0, tensorboard=False, **SMALL)
    finetune(FinetuneConfig(tiny_synth, out=str(tmp_path / "a"), iters=4, **common))
    finetune(FinetuneConfig(tiny_synth, out=str(tmp_path / "b"), iters=2, **common))
    finetune(FinetuneConfig(tiny_synth, out=str(tmp_path / "b"), iters=4, resume=True, **common))
    a = load_file(str(tmp_path / "a" / "seed0" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "b" / "seed0" / "checkpoints" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_finetuning_computes_the_same_run(tiny_synth, pretrained, tmp_path):
    """channels_last_3d (the default) is a memory layout only: same weights and test scores as contiguous."""
    common = dict(init=pretrained, batch_size=4, lr=0.05, iters=3, test_clips=2, workers=0, tensorboard=False, **SMALL)
    finetune(FinetuneConfig(tiny_synth, out=str(tmp_path / "a"), channels_last=True, bf16=False, **common))
    finetune(FinetuneConfig(tiny_synth, out=str(tmp_path / "b"), channels_last=False, bf16=False, **common))
    wa = load_file(str(tmp_path / "a" / "seed0" / "checkpoints" / "last.safetensors"))
    wb = load_file(str(tmp_path / "b" / "seed0" / "checkpoints" / "last.safetensors"))
    # float sums run in another order: ~5e-4 apart after 3 steps at lr 0.05; a layout bug is O(0.1)
    assert all(torch.allclose(wa[k], wb[k], atol=2e-3) for k in wa)
    sa = load_file(str(tmp_path / "a" / "seed0" / "scores.safetensors"))["clip_probs"]
    sb = load_file(str(tmp_path / "b" / "seed0" / "scores.safetensors"))["clip_probs"]
    assert torch.allclose(sa, sb, atol=2e-3)


def test_bf16_default_is_on_only_where_it_is_faster():
    from vidssl.runtime import bf16_choice, bf16_fast, bf16_supported

    cpu = torch.device("cpu")
    assert bf16_choice(None, cpu)[0] == bf16_fast(cpu)  # unset: the measured-faster rule
    assert bf16_choice(True, cpu)[0] == bf16_supported(cpu)  # asked: wherever it runs
    assert bf16_choice(False, cpu)[0] is False
    if not bf16_fast(cpu):  # e.g. this CI's CPUs: no AMX -> fp32, and one line says why
        use, why = bf16_choice(None, cpu)
        assert not use and why == "fp32 on cpu: bf16 is not faster here (this CPU has no AMX); --bf16 forces it"


def test_test_only_gives_the_test_of_the_run_that_made_the_checkpoint(tiny_synth, pretrained, tmp_path):
    common = dict(batch_size=4, lr=0.05, test_clips=2, workers=0, tensorboard=False, **SMALL)
    ran = finetune(FinetuneConfig(tiny_synth, init=pretrained, out=str(tmp_path / "a"), iters=3, **common))
    last = str(tmp_path / "a" / "seed0" / "checkpoints" / "last")
    again = finetune(FinetuneConfig(tiny_synth, init=last, out=str(tmp_path / "t"), test_only=True, **common))
    assert again["runs"][0]["video_top1"] == ran["runs"][0]["video_top1"]
    a, t = (load_file(str(tmp_path / d / "seed0" / "scores.safetensors"))["clip_probs"] for d in ("a", "t"))
    assert torch.equal(a, t) and not os.path.isdir(str(tmp_path / "t" / "seed0" / "checkpoints"))  # nothing trained
    assert again["runs"][0]["tested"]["checkpoint"] == os.path.abspath(last)
    with pytest.raises(checkpoint.CheckpointError, match="--test-only tests a fine-tuned checkpoint"):
        finetune(FinetuneConfig(tiny_synth, init=pretrained, out=str(tmp_path / "p"), test_only=True, **common))
