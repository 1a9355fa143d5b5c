"""Every heavy command under torchrun gives what one process gives: fine-tuning (training batches
and the test sharded, rank 0 writes), feature extraction for retrieve/probe/eval-pretext (videos
sharded, gathered in order), and preprocess --shard for a cluster job array. 2 CPU processes."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import torch
from safetensors.torch import load_file

from vidssl.cli import main

# fp32: the equalities below hold in it; under bf16 autocast (the default on CPUs with AMX) batches
# split across processes round differently (fine-tuned probabilities 1e-4 apart on one such CPU).
SMALL = ["--frame-size", "40x40", "--crop", "32", "--no-progress", "--no-bf16"]
FINETUNE = ["finetune", "{d}", "--init", "scratch", "--backbone", "r3d_10", "--width", "0.25", "--clip-length", "8",
            "--freeze-until", "all", "--epochs", "1", "--lr", "0.1", "--test-clips", "2", "--workers", "0",
            "--no-tensorboard", "--no-channels-last", *SMALL]  # fmt: skip
RETRIEVE = ["retrieve", "{d}", "--init", "random", "--backbone", "r3d_10", "--width", "0.25", "--clip-length", "8",
            "--clips", "2", "--feature", "pooled", *SMALL]  # fmt: skip
PROBE = ["probe", "{d}", "--init", "random", "--backbone", "r3d_10", "--width", "0.25", "--clip-length", "8",
         "--clips", "2", "--k", "3", *SMALL]  # fmt: skip
EVAL_PRETEXT = ["eval-pretext", "{c}", "{d}", "--batch-size", "4", "--no-progress", "--no-bf16"]
EMBED = ["embed", "{c}", "{d}", "--clips", "2", "--no-progress", "--save-every", "2", "--no-bf16"]


ABORT = "terminate called without an active exception"


def run_under_torchrun(commands: list[list[str]], tmp_path) -> subprocess.CompletedProcess:
    """One 2-process torchrun that runs each vidssl command line in turn (one process group)."""
    script = tmp_path / "many.py"
    script.write_text(
        "import json, sys\nimport torch.distributed as dist\nfrom vidssl.cli import main\n"
        "for args in json.loads(sys.argv[1]):\n    assert main(args) == 0, args\n"
        "    print('finished', args[0], file=sys.stderr, flush=True)\n"  # where a rank that aborts got to
        "if dist.is_initialized():\n    dist.destroy_process_group()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           json.dumps(commands)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _failure(r: subprocess.CompletedProcess) -> str:
    """What the ranks said before torchrun's summary (its tail alone hides the cause)."""
    head = r.stderr.split('Traceback (most recent call last):\n  File "<frozen runpy>"')[0]
    return head[-4000:] + "\n...\n" + r.stderr[-1500:]


def test_commands_under_torchrun_give_what_one_process_gives(tiny_synth, pretrained, tmp_path, capsys):
    fill = lambda args, out: [a.format(d=tiny_synth, c=pretrained) for a in args] + ["--out", str(out)]
    one, two = tmp_path / "one", tmp_path / "two"
    # One process: batch 4. Two processes: batch 2 each, so every step sees the same 4 clips.
    assert main(fill(FINETUNE, one / "ft") + ["--batch-size", "4"]) == 0
    evaluations = ((RETRIEVE, "rt"), (PROBE, "pr"), (EVAL_PRETEXT, "ep"), (EMBED, "emb.safetensors"))
    for args, name in evaluations:
        assert main(fill(args, one / name)) == 0
    capsys.readouterr()
    commands = [fill(FINETUNE, two / "ft") + ["--batch-size", "2"]]
    commands += [fill(args, two / name) for args, name in evaluations]
    r = run_under_torchrun(commands, tmp_path)
    if r.returncode != 0 and ABORT in r.stderr:
        # Seen once in six runs on a 2-core Intel Xeon (2026-12-03): one rank aborted in C++ (SIGABRT,
        # no Python traceback), as gloo's threads can at process teardown (pytorch/pytorch#190489).
        # One more try tells that from a failure of ours; the warning keeps it in the test report.
        warnings.warn(f"torchrun: a rank aborted ({ABORT!r}); ran again:\n{_failure(r)[-2000:]}", stacklevel=1)
        shutil.rmtree(two)
        r = run_under_torchrun(commands, tmp_path)
    assert r.returncode == 0, _failure(r)
    assert r.stdout.count("over 1 seed(s)") == 1 and r.stdout.count("linear probe top-1") == 1  # rank 0 alone prints

    # Fine-tuning (frozen backbone: only the new layer trains, batch norm keeps its statistics).
    a, b = load_file(str(one / "ft/seed0/scores.safetensors")), load_file(str(two / "ft/seed0/scores.safetensors"))
    assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["clip_probs"], b["clip_probs"], atol=1e-5)
    ra, rb = json.load(open(one / "ft/results.json")), json.load(open(two / "ft/results.json"))
    assert ra["summary"]["video_top1"] == rb["summary"]["video_top1"]
    assert [r["train_names"] for r in ra["runs"]] == [r["train_names"] for r in rb["runs"]]
    assert load_file(str(one / "ft/seed0/checkpoints/last.safetensors"))["fc.weight"].allclose(
        load_file(str(two / "ft/seed0/checkpoints/last.safetensors"))["fc.weight"], atol=1e-5
    )
    # Features: the same rows in the same order (embed: each rank every second video, rank 0 writes).
    from vidssl.embed import read_embeddings

    (ea, na, _), (eb, nb, mb) = (read_embeddings(str(d / "emb.safetensors")) for d in (one, two))
    assert na == nb and len(na) == 18 and torch.allclose(ea, eb, atol=1e-5) and mb["world"] == 2
    for name in ("rt", "pr"):
        for tag in ("query", "gallery"):
            fa = load_file(str(one / name / f"features_{tag}.safetensors"))
            fb = load_file(str(two / name / f"features_{tag}.safetensors"))
            assert torch.equal(fa["labels"], fb["labels"]) and torch.allclose(fa["features"], fb["features"], atol=1e-5)
    ja, jb = json.load(open(one / "rt/results.json")), json.load(open(two / "rt/results.json"))
    assert ja["clip"] == jb["clip"] and ja["video"] == jb["video"] and ja["query_videos"] == 6
    pa, pb = json.load(open(one / "pr/probe.json")), json.load(open(two / "pr/probe.json"))
    assert pa["knn_top1"] == pb["knn_top1"] and abs(pa["linear_top1"] - pb["linear_top1"]) < 1e-6
    # Pretext accuracy (rotation: every rotation of every clip, so no draw depends on the batching).
    ea, eb = json.load(open(one / "ep/pretext.json")), json.load(open(two / "ep/pretext.json"))
    assert abs(ea[0]["pretext_acc"] - eb[0]["pretext_acc"]) < 1e-9
    assert abs(ea[0]["pretext_loss"] - eb[0]["pretext_loss"]) < 1e-5


def test_preprocess_shards_make_the_whole_cache(tiny_synth, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ["--size", "32x32", "--format", "raw", "--workers", "1", "--no-progress"]
    assert main(["preprocess", tiny_synth, "--out", str(whole), *args]) == 0
    for i in (1, 2):
        assert main(["preprocess", tiny_synth, "--out", str(parts), "--shard", f"{i}/2", *args]) == 0
    reports = [json.load(open(parts / f"report-shard{i}of2.json")) for i in (1, 2)]
    assert [r["videos"] for r in reports] == [9, 9] and [r["shard"] for r in reports] == ["1/2", "2/2"]
    files = lambda root: sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if f.endswith(".npy")
    )
    assert files(whole) == files(parts) and len(files(whole)) == 18
    assert all(open(whole / f, "rb").read() == open(parts / f, "rb").read() for f in files(whole))
    assert main(["preprocess", tiny_synth, "--out", str(parts), "--shard", "3/2", *args]) == 2
    assert "--shard takes I/N with 1 <= I <= N" in capsys.readouterr().err


def test_a_recipe_under_torchrun(tmp_path):
    """Every stage runs in one process group; rank 0 alone writes the smoke dataset, the records
    and the table (two ranks writing the dataset at once once collided on its temporary files)."""
    out = tmp_path / "recipe"
    args = ["reproduce", "vcop-table1", "--scale", "smoke", "--out", str(out), "--data", str(tmp_path / "data")]
    r = run_under_torchrun([args], tmp_path)
    assert r.returncode == 0, _failure(r)
    assert r.stdout.count("[vcop-table1] pretrain-c3d: vidssl pretrain") == 1  # printed by rank 0 alone
    table = json.load(open(out / "table.json"))
    assert [row["row"] for row in table["rows"]] == ["C3D", "R3D", "R(2+1)D"]
    assert json.load(open(out / "pretrain-c3d" / "summary.json"))["world_size"] == 2
