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
    with pytest.raises(SystemExit) as e:
        main(["preprocess", str(tmp_path), "--out", "x", "--size", "12by3"])
    assert e.value.code == 2
    assert "not a size" in capsys.readouterr().err


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
    md = open(out / "report.md").read()
    page = open(out / "report.html").read()
    for title in ("Pretext accuracy", "Fine-tuning", "Retrieval", "Run time"):
        assert title in md and title in page
    for name, path in report["pictures"].items():
        assert os.path.getsize(path) > 1000, name
        assert f"pictures/{os.path.basename(path)}" in page and open(path, "rb").read(4) == b"\x89PNG"
