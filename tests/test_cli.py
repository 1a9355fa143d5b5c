import json
import os
import subprocess
import sys

import pytest

from vidssl.cli import COMMANDS, main


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_has_help_with_defaults(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: vidssl {command}" in out
    if command != "stats":
        assert "(default:" in out


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "vidssl", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "preprocess" in r.stdout


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "not found" in err and "Traceback" not in err
    assert main(["preprocess", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no video files" in capsys.readouterr().err
    assert main(["preprocess", str(tmp_path), "--out", "x", "--size", "12by3"]) == 2
    assert "not a size" in capsys.readouterr().err


# Invalid combinations a user may try: (arguments after the dataset, words the one line must hold).
BAD_ARGS = [
    (["pretrain", "{d}", "--iters", "-5"], "--iters must be positive, not -5"),
    (["pretrain", "{d}", "--batch-size", "0"], "--batch-size must be positive"),
    (["pretrain", "{d}", "--workers", "-3"], "--workers must be 0 or more"),
    (["pretrain", "{d}", "--flip", "2"], "--flip is a probability: 0 to 1"),
    (["pretrain", "{d}", "--frame-size", "0x8"], "not a size; write HxW"),
    (["pretrain", "{d}", "--crop", "64", "--frame-size", "32x32"], "--crop 64 is larger than the frames (32x32)"),
    (["pretrain", "{d}", "--backbone", "resnet50"], "unknown backbone 'resnet50'; choose one of c3d, r3d_10"),
    (["pretrain", "{d}", "--task", "colour"], "invalid choice: 'colour' (choose from 'rotation', 'clip_order'"),
    (
        ["pretrain", "{d}", "--split", "7"],
        "--split must be 1, 2 or 3 (validation splits: 4 in the embedded dataset, 4-6 in a manifest dataset)",
    ),
    (["pretrain", "{d}", "--split", "5"], "UCF101 has splits 1, 2, 3"),  # 4-6: manifests; 4: the embedded set
    (["pretrain", "{d}", "--kind", "ucf102"], "invalid choice: 'ucf102' (choose from 'auto', 'ucf101'"),
    (["pretrain", "{d}", "--task", "clip_order", "--num-clips", "9"], "--num-clips must be 2 to 5, not 9"),
    (["pretrain", "{d}", "--cache", "{d}/nowhere"], "not a frame cache"),
    (["pretrain", "{d}/nowhere"], "nowhere: dataset folder not found"),
    (["finetune", "{d}", "--test-clips", "0"], "--test-clips must be positive"),
    (["finetune", "{d}", "--shots", "-1"], "--shots must be positive"),
    (["finetune", "{d}", "--freeze-until", "conv9"], "invalid choice: 'conv9' (choose from 'none', 'conv2'"),
    (["finetune", "{d}", "--init", "{d}/missing.json"], "missing.json: checkpoint not found"),
    (["finetune", "{d}", "--seeds", "a,b"], "--seeds takes comma-separated integers"),
    (["retrieve", "{d}", "--clips", "-2"], "--clips must be positive, not -2"),
    (["retrieve", "{d}", "--feature", "fc7"], "invalid choice: 'fc7' (choose from 'pooled', 'vcop', 'conv2'"),
    (["retrieve", "{d}", "--bogus", "3"], "unrecognized arguments: --bogus 3"),
    (["finetune"], "the following arguments are required: DATASET"),
    (["visualize", "kernels", "{d}/missing.json"], "missing.json: checkpoint not found"),
]


@pytest.mark.parametrize("args,words", BAD_ARGS, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD_ARGS])
def test_invalid_arguments_end_in_one_line_naming_the_problem_exit_2(tiny_synth, args, words, capsys):
    try:
        code = main([a.format(d=tiny_synth) for a in args])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and words in err and "Traceback" not in err, err


def test_a_clip_longer_than_any_video_is_one_line_in_a_real_shell(tiny_synth):
    r = subprocess.run(
        [sys.executable, "-m", "vidssl", "pretrain", tiny_synth, "--clip-length", "500", "--no-progress"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines  # the count of skipped videos, then the error (no line per video)
    assert "skipped 12 of 12 videos" in lines[0]
    assert lines[1].startswith("vidssl pretrain: error: ") and "shorter than the 500" in lines[1]


def test_synth_preprocess_stats_end_to_end(tmp_path, capsys):
    data, cache = str(tmp_path / "synth"), str(tmp_path / "cache")
    args = ["--classes", "2", "--groups", "3", "--clips", "1", "--frames", "20", "--height", "32", "--width", "32"]
    assert main(["synth", data, *args, "--workers", "1"]) == 0
    assert main(["preprocess", data, "--out", cache, "--size", "32x32", "--workers", "1", "--no-progress"]) == 0
    report = json.load(open(os.path.join(cache, "report.json")))
    assert report["videos"] == 6 and report["skipped"] == 0
    capsys.readouterr()
    assert main(["stats", data, "--cache", cache, "--clip-length", "8"]) == 0
    out = capsys.readouterr().out
    assert "ucf101" in out and "train" in out and "test" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("train", "test"))]
    assert sum(int(r[1]) for r in rows) == 6


def test_demo_quick_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/8] synthetic dataset", "[5/8] fine-tuning", "[8/8] report"):
        assert stage in printed
    report = json.load(open(out / "report.json"))
    assert set(report["finetune_top1"]) == {
        f"{i} | {lab}" for i in ("scratch", "rotation", "clip order") for lab in ("few-shot", "all")
    }
    assert set(report["retrieval"]) >= {"random", "rotation", "clip order"}
    assert set(report["pretext"]) == {"rotation", "clip-order"}
    import yaml

    lrs = {d: yaml.safe_load(open(out / "finetune" / d / "config.yaml"))["lr"] for d in os.listdir(out / "finetune")}
    assert lrs.pop("clip_order-all") == 1e-3 and set(lrs.values()) == {3e-3}  # as chosen on split 4 (demo.FT_LR)
    md = open(out / "report.md").read()
    page = open(out / "report.html").read()
    for title in ("Pretext accuracy", "Fine-tuning", "Retrieval", "Run time"):
        assert title in md and title in page
    import base64
    import re

    assert "SMOKE TEST" in page.split("</title>")[0] and "SMOKE TEST" in md.splitlines()[0]  # never read as a result
    for fact in ("vidssl", "torch", "commit", "device", "date", "seeds"):
        assert f"<td>{fact}</td>" in page
    assert "chance" in page and "+-" in page  # chance levels and spreads beside the accuracies
    assert re.search(r"<td>rotation</td><td>[\d.]+</td><td>25\.0</td>", page)  # pretext: chance of 4 rotations
    images = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", page)
    assert {n for n, _ in images} == set(report["pictures"]) and "retrieval clip order" in report["pictures"]
    assert all(base64.b64decode(data)[:4] == b"\x89PNG" for _, data in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # opens alone: no other file is referenced
    assert page.count("<p class=cap>") == len(images) + 4  # a caption under every picture and table
    for name, path in report["pictures"].items():
        assert os.path.getsize(path) > 1000, name


def test_flags_of_torchvision_and_timm_are_aliases(tmp_path, capsys):
    import yaml

    args = ["pretrain", "data", "--output-dir", str(tmp_path / "o"), "-b", "6", "-j", "1", "--print-config"]
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["out"], cfg["batch_size"], cfg["workers"]) == (str(tmp_path / "o"), 6, 1)
    assert main(["finetune", "data", "--lr-milestones", "10", "20", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lr_milestones"] == [10, 20]
    assert main(["retrieve", "data", "-b", "2", "--print-config"]) == 0  # retrieval's batch size too
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] == 2


def test_resume_path_names_the_run_folder(tmp_path):
    from vidssl.cliargs import ArgError, translate_aliases

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("out: x\n")
    (run / "checkpoints" / "last.json").write_text("{}")
    fields = {"resume", "out", "dataset"}
    for path in (str(run), str(run / "checkpoints" / "last"), str(run / "checkpoints" / "last.json")):
        assert translate_aliases("pretrain", ["d", "--resume", path], fields) == ["d", "--resume", "--out", str(run)]
    data = tmp_path / "data"
    data.mkdir()  # a dataset after a bare --resume stays the dataset
    assert translate_aliases("pretrain", ["--resume", str(data)], fields) == ["--resume", str(data)]
    with pytest.raises(ArgError, match="is in run"):
        translate_aliases("pretrain", ["d", "--resume", str(run), "--out", str(tmp_path / "elsewhere")], fields)


def test_lr_milestones_decay_at_those_steps():
    from vidssl.train import LoopConfig, lr_at

    cfg = LoopConfig(batch_size=1, total_steps=100, lr=1.0, lr_milestones=(10, 30), lr_decay_every=5)
    assert [lr_at(s, cfg) for s in (0, 9, 10, 29, 30, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(5, LoopConfig(batch_size=1, total_steps=100, lr=1.0, lr_decay_every=5)) == pytest.approx(0.1)
