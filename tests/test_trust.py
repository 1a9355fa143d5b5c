"""Runs you can trust: a run folder is never overwritten, a resume never changes a run's settings,
caches are keyed on what made them, non-finite numbers never become a table, and every expected
failure is one line (README "Reliability"). Each test injects one fault."""

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidssl import checkpoint
from vidssl import reproduce as R
from vidssl.cli import main

TINY = ["--backbone", "r3d_10", "--width", "0.25", "--clip-length", "8", "--batch-size", "4", "--lr", "0.01",
        "--val-videos", "2", "--workers", "0", "--no-tensorboard", "--frame-size", "40x40", "--crop", "32",
        "--no-progress"]  # fmt: skip
EVAL = ["--frame-size", "40x40", "--crop", "32", "--clips", "2", "--no-progress"]


def _digests(folder) -> dict:
    """Every file under a folder and a hash of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.fixture(scope="module")
def run(tiny_synth, tmp_path_factory):
    """A finished 4-step pretraining run (its folder) made through the command line."""
    out = str(tmp_path_factory.mktemp("runs") / "pre")
    assert main(["pretrain", tiny_synth, "--out", out, "--iters", "4", *TINY]) == 0
    return out


def test_a_second_pretrain_into_a_run_folder_is_refused_and_changes_nothing(tiny_synth, run, capsys):
    before = _digests(run)
    assert main(["pretrain", tiny_synth, "--out", run, "--iters", "4", *TINY]) == 2
    line = _err(capsys)
    assert f"{run} already holds a run; --resume continues it" in line and "--overwrite moves" in line
    assert _digests(run) == before  # not a byte of the first run changed (log.csv, tb, checkpoints)


def test_overwrite_moves_the_old_run_aside_whole(tiny_synth, run, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "pre")
    shutil.copytree(run, out)
    before = _digests(out)
    assert main(["pretrain", tiny_synth, "--out", out, "--iters", "2", "--overwrite", *TINY]) == 0
    assert _digests(out + ".old-1") == before
    assert json.load(open(os.path.join(out, "summary.json")))["steps"] == 2


def test_resume_takes_the_runs_settings_and_a_safe_change(tiny_synth, run, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "pre")
    shutil.copytree(run, out)
    # no flags repeated: every setting comes from OUT/config.yaml; --iters is safe to change
    assert main(["pretrain", tiny_synth, "--out", out, "--resume", "--iters", "6", "--no-progress"]) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["steps"] == 6
    meta = checkpoint.read_meta(os.path.join(out, "checkpoints", "last.json"))
    assert meta["config"]["lr"] == 0.01 and meta["config"]["width"] == 0.25  # the run's, not the defaults


def test_a_run_made_before_an_option_existed_still_resumes(tiny_synth, run, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "old")
    shutil.copytree(run, out)
    path = os.path.join(out, "config.yaml")
    lines = open(path).read().splitlines(keepends=True)
    open(path, "w").writelines(line for line in lines if not line.startswith("lr_milestones"))  # as 0.1 wrote it
    assert main(["pretrain", tiny_synth, "--out", out, "--resume", "--iters", "6", "--no-progress"]) == 0
    assert main(["pretrain", tiny_synth, "--out", out, "--resume", "--iters", "8", "--lr-milestones", "7"]) == 2
    assert "--lr-milestones [7] (the run has [])" in capsys.readouterr().err  # its config now names it: refused


def test_an_option_gained_since_is_the_same_run_only_at_its_default():
    """One rule for resume, evaluation reruns and reproduce's stage records (fields.gained_since):
    an option the record lacks is no difference at the config class's default, and a difference at
    any other value, even an empty one (the old rule let any None/False/[] through)."""
    from vidssl.runs import contradictions

    stored, defaults = {"lr": 0.01}, {"lr": 0.1, "shuffle": True, "milestones": []}
    assert contradictions(stored, {"lr": 0.01, "shuffle": True, "milestones": []}, defaults=defaults) == []
    assert contradictions(stored, {"lr": 0.01, "shuffle": False}, defaults=defaults) == [
        "--shuffle False (the run has unset)"
    ]
    assert contradictions({"lr": 0.01, "shuffle": True}, {"lr": 0.01, "shuffle": True}, defaults={}) == []
    assert R._differences(stored, {"lr": 0.01, "shuffle": True}, _Gained) == []
    assert R._differences(stored, {"lr": 0.01, "shuffle": False}, _Gained) == ["shuffle"]


@dataclasses.dataclass
class _Gained:
    lr: float = 0.1
    shuffle: bool = True


@pytest.mark.parametrize(
    "flags,said",
    [
        (["--lr", "0.05"], "--lr 0.05 (the run has 0.01)"),
        (["--clip-length", "16"], "--clip-length 16 (the run has 8)"),
        (["--optimizer", "adamw"], "--optimizer 'adamw' (the run has 'sgd')"),
        (["--rotations", "0,90"], "--rotations '0,90' (the run has '0,90,180,270')"),
        (["--task", "clip_order", "--num-clips", "4"], "--num-clips 4 (the run has 3)"),
        (["--modality", "dif"], "--modality 'dif' (the run has 'rgb')"),
        (["--order-head", "centered"], "--order-head 'centered' (the run has 'paper')"),
    ],
)
def test_resume_refuses_a_flag_that_contradicts_the_run(tiny_synth, run, flags, said, capsys):
    before = _digests(run)
    assert main(["pretrain", tiny_synth, "--out", run, "--resume", *flags]) == 2
    line = _err(capsys)
    assert said in line and "--resume continues the run with its stored settings" in line
    assert _digests(run) == before


def test_resume_with_nothing_to_resume_is_one_line(tiny_synth, tmp_path, capsys):
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "none"), "--resume", *TINY]) == 2
    assert "nothing to resume (no checkpoints/last.json); drop --resume" in _err(capsys)


def test_finetune_into_an_existing_run_is_refused(tiny_synth, pretrained, tmp_path, capsys):
    args = ["finetune", tiny_synth, "--init", pretrained, "--out", str(tmp_path / "ft"), "--iters", "1",
            "--batch-size", "4", "--test-clips", "1", "--workers", "0", "--no-tensorboard", "--frame-size", "40x40",
            "--crop", "32", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    before = _digests(tmp_path / "ft")
    assert main(args + ["--lr", "0.5"]) == 2
    assert "already holds a run; --resume continues it" in _err(capsys)
    assert _digests(tmp_path / "ft") == before


def test_an_evaluation_reruns_in_place_but_refuses_other_settings(tiny_synth, pretrained, tmp_path, capsys):
    out = str(tmp_path / "r")
    args = ["retrieve", tiny_synth, "--init", pretrained, "--out", out, *EVAL]
    assert main(args) == 0 and main(args) == 0  # the same settings: the same results, recomputed
    before = _digests(out)
    assert main(args + ["--neighbours", "3"]) == 2
    assert "already holds results of other settings (--neighbours 3" in _err(capsys)
    assert _digests(out) == before
    assert main(args + ["--neighbours", "3", "--overwrite"]) == 0 and _digests(out + ".old-1") == before


def test_an_unwritable_out_is_one_line(tiny_synth, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "file"), *TINY]) == 2
    assert "--out is a file, not a folder" in _err(capsys)
    import builtins

    real_open = builtins.open

    def read_only(path, mode="r", *a, **k):  # root ignores chmod: the OS's answer, injected
        if "w" in mode and "ro" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", read_only)
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "ro"), *TINY]) == 2
    assert "ro: cannot write the run there (Permission denied); choose another --out" in _err(capsys)


def _resave(path, weights):
    """Replace a checkpoint's weights in place (same commit id, as a retrained run would have)."""
    meta = checkpoint.read_meta(path)
    base = path[: -len(".json")]
    save_file(weights, base + ".safetensors", metadata={"format": checkpoint.FORMAT, "commit": meta["commit"]})


def test_retrained_weights_at_the_same_path_never_reuse_old_features(tiny_synth, pretrained, tmp_path):
    import shutil

    ck = str(tmp_path / "ck")
    shutil.copytree(os.path.dirname(pretrained), ck)
    path = os.path.join(ck, os.path.basename(pretrained))
    out = str(tmp_path / "r")
    args = ["retrieve", tiny_synth, "--init", path, "--out", out, *EVAL]
    assert main(args) == 0
    old = load_file(os.path.join(out, "features_query.safetensors"))["features"]
    w = load_file(path[: -len(".json")] + ".safetensors")
    _resave(path, {k: v * 1.5 if v.is_floating_point() else v for k, v in w.items()})  # same path, same step
    assert main(args) == 0
    new = load_file(os.path.join(out, "features_query.safetensors"))["features"]
    assert not torch.allclose(old, new)


def test_non_finite_or_misshapen_weights_and_bad_sidecars_are_one_line(tiny_synth, pretrained, tmp_path, capsys):
    import shutil

    ck = str(tmp_path / "ck")
    shutil.copytree(os.path.dirname(pretrained), ck)
    path = os.path.join(ck, os.path.basename(pretrained))
    w = load_file(path[: -len(".json")] + ".safetensors")
    args = ["retrieve", tiny_synth, "--init", path, "--out", str(tmp_path / "r"), *EVAL]
    key = next(k for k in w if k.startswith("backbone.") and k.endswith("weight"))
    _resave(path, {**w, key: torch.full_like(w[key], float("nan"))})
    assert main(args) == 2
    line = _err(capsys)
    assert "hold NaN/inf" in line and ".safetensors" in line and not os.path.exists(tmp_path / "r" / "results.json")
    _resave(path, {**w, key: w[key][:1]})
    assert main(args) == 2
    assert f"weights do not fit r3d_10 x0.25: shape ['{key[len('backbone.') :]} (1," in _err(capsys)
    _resave(path, w)
    meta = json.load(open(path))
    json.dump({**meta, "width": "quarter"}, open(path, "w"))
    assert main(args) == 2
    assert "'width' is 'quarter', not a number" in _err(capsys)


def test_training_never_saves_non_finite_weights(tiny_synth, tmp_path, monkeypatch):
    from vidssl.config import PretrainConfig
    from vidssl.pretrain import pretrain

    real_step = torch.optim.SGD.step

    def poisoned(self, *a, **k):  # an update that leaves NaN in the weights (a finite loss before it)
        out = real_step(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned)
    cfg = PretrainConfig(tiny_synth, out=str(tmp_path / "p"), backbone="r3d_10", width=0.25, clip_length=8,
                         batch_size=4, iters=3, lr=0.01, val_videos=2, workers=0, tensorboard=False,
                         frame_size=(40, 40), crop=32, progress=False, ckpt_every=1)  # fmt: skip
    with pytest.raises(FloatingPointError, match="the weights hold NaN/inf at step 1; nothing saved"):
        pretrain(cfg)
    assert not os.path.exists(tmp_path / "p" / "checkpoints" / "last.json")


def test_implausible_numbers_are_one_line(tiny_synth, tmp_path, capsys):
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "a"), "--width", "25"]) == 2
    assert "--width must be in (0, 4]: a channel multiplier (0.25 is a quarter), not 25.0" in _err(capsys)
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "a"), "--lr", "inf"]) == 2
    assert "--lr must be a finite number, not inf" in _err(capsys)
    assert not os.path.exists(tmp_path / "a")


def test_interrupt_is_exit_130_and_os_errors_one_line(tiny_synth, tmp_path, capsys, monkeypatch):
    import vidssl.cli as cli

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_pretrain", interrupted)
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "a")]) == 130
    assert "interrupted (--resume continues from its last checkpoint)" in _err(capsys)

    def full(cfg):
        raise OSError(28, "No space left on device", "/data/cache/x.jpgs")

    monkeypatch.setattr(cli, "run_pretrain", full)
    assert main(["pretrain", tiny_synth, "--out", str(tmp_path / "a")]) == 2
    assert _err(capsys) == (
        "vidssl pretrain: error: /data/cache/x.jpgs: No space left on device; the disk is full: free space or "
        "choose another --out; what was written before is intact"
    )


def test_ctrl_c_during_preprocess_with_workers_stops_them_and_exits_130(tmp_path):
    data = str(tmp_path / "d")
    assert main(["synth", data, "--classes", "3", "--groups", "3", "--clips", "4", "--frames", "60", "--height",
                 "96", "--width", "128", "--workers", "1"]) == 0  # fmt: skip
    cmd = [sys.executable, "-m", "vidssl", "preprocess", data, "--out", str(tmp_path / "c"), "--workers", "2",
           "--size", "96x128", "--no-progress"]  # fmt: skip
    p, log = _start(cmd, tmp_path)
    deadline = time.time() + 60
    while time.time() < deadline and not any(f.endswith(".jpgs") for _, _, fs in os.walk(tmp_path / "c") for f in fs):
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    err = _ended(p, log, "preprocess hung after Ctrl-C")
    assert p.returncode == 130 and "vidssl preprocess: interrupted" in err, err[-500:]
    _no_process_left(p.pid)  # no worker outlives its command


def _start(cmd, tmp_path):
    """A command in its own process group, its output in a file (a pipe would stay open as long as
    any worker lives, and waiting for it would measure the workers, not the command)."""
    log = open(tmp_path / "out.log", "w+")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True), log


def _ended(p, log, what: str) -> str:
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(what)
    log.seek(0)
    return log.read()


def _no_process_left(group: int) -> None:
    for _ in range(100):  # workers stopped by the signal may take a moment to be gone
        if not subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True).stdout.split():
            return
        time.sleep(0.1)
    pytest.fail(f"processes of group {group} outlived their command")


def test_a_child_that_missed_the_signal_goes_with_its_command(tmp_path):
    """A worker forked after the group's signal (or not yet in multiprocessing's list) never got
    it: the command's handler kills every process whose parent it is (seen in CI: one outlived
    its command by 10 s)."""
    script = tmp_path / "cmd.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from vidssl.errors import signals_end_the_command\n"
        "with signals_end_the_command('pretrain'):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # like a worker that never sees the stop
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    print(pid, flush=True)\n"
        "    time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGTERM)  # the command alone, not its group: the child is not signalled
    assert p.wait(timeout=30) == 143
    for _ in range(50):
        if subprocess.run(["pgrep", "-g", str(p.pid)], capture_output=True, text=True).stdout.split() == []:
            break
        time.sleep(0.1)
    else:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"child {child} outlived its command")


def test_a_pool_that_ends_its_workers_prints_no_stop(tmp_path):
    """A process pool ends its workers with SIGTERM when its work is done (`vidssl synth` and
    `preprocess` use one); a worker inherits the command's handler at fork, and printed "vidssl
    synth: terminated" under a run that succeeded. Only the command itself reports a stop."""
    script = tmp_path / "cmd.py"
    script.write_text(
        "import multiprocessing, time\n"
        "from vidssl.errors import signals_end_the_command\n"
        "with signals_end_the_command('synth'):\n"
        "    with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "        print(sum(pool.map(abs, range(-4, 4))), flush=True)\n"
        "    time.sleep(0.5)\n"  # the workers' SIGTERM lands while the block still holds
    )
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout.strip(), p.stderr) == (0, "16", "")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_during_pretraining_with_workers_then_resume(tiny_synth, tmp_path, sig, code, word):
    out = str(tmp_path / "p")
    workers = [a if a != "0" or b != "--workers" else "2" for b, a in zip(["", *TINY], TINY)]  # 2 DataLoader workers
    cmd = [sys.executable, "-m", "vidssl", "pretrain", tiny_synth, "--out", out, "--iters", "400", "--ckpt-every", "2",
           *workers]  # fmt: skip
    p, log = _start(cmd, tmp_path)
    last = os.path.join(out, "checkpoints", "last.json")
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(last):
        time.sleep(0.1)
    os.killpg(p.pid, sig)
    err = _ended(p, log, "pretrain hung after the signal")
    assert p.returncode == code and f"vidssl pretrain: {word} (--resume continues" in err, err[-800:]
    _no_process_left(p.pid)
    step = checkpoint.read_meta(last)["step"]
    assert 2 <= step < 400
    assert main(["pretrain", tiny_synth, "--out", out, "--resume", "--iters", str(step + 2), "--no-progress"]) == 0
    assert json.load(open(os.path.join(out, "summary.json")))["steps"] == step + 2


def test_a_damaged_feature_file_is_computed_again(tiny_synth, pretrained, tmp_path, caplog):
    import logging

    out = str(tmp_path / "r")
    args = ["retrieve", tiny_synth, "--init", pretrained, "--out", out, *EVAL]
    assert main(args) == 0
    path = os.path.join(out, "features_query.safetensors")
    good = load_file(path)["features"].clone()  # a copy: the loaded tensor maps the file it came from
    open(path, "r+b").truncate(100)
    with caplog.at_level(logging.WARNING, logger="vidssl"):
        assert main(args) == 0
    assert any("unreadable feature file" in r.getMessage() for r in caplog.records)
    assert torch.equal(load_file(path)["features"], good)


def test_non_finite_features_are_an_error_not_a_table(tiny_synth, pretrained, tmp_path, capsys, monkeypatch):
    import vidssl.features as features

    real = features.extract_features

    def overflowing(*a, **k):
        feats, labels = real(*a, **k)
        return feats.index_fill(0, torch.tensor([0]), float("inf")), labels

    monkeypatch.setattr(features, "extract_features", overflowing)
    assert main(["retrieve", tiny_synth, "--init", pretrained, "--out", str(tmp_path / "r"), *EVAL]) == 2
    line = _err(capsys)
    assert "NaN/inf features for 1 of" in line and pretrained in line
    assert not os.path.exists(tmp_path / "r" / "results.json")


def test_synth_never_writes_into_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "real" / "ucfTrainTestlist").mkdir(parents=True)
    (tmp_path / "real" / "ucfTrainTestlist" / "classInd.txt").write_text("1 Mine\n")
    assert main(["synth", str(tmp_path / "real"), "--classes", "3", "--groups", "3", "--clips", "1"]) == 2
    assert "holds other files (no synth.json: not a synthetic dataset)" in _err(capsys)
    assert (tmp_path / "real" / "ucfTrainTestlist" / "classInd.txt").read_text() == "1 Mine\n"


def test_a_folder_or_a_wrong_file_where_a_checkpoint_or_scores_go_is_one_line(tiny_synth, pretrained, tmp_path, capsys):
    folder = os.path.dirname(pretrained)
    assert main(["retrieve", tiny_synth, "--init", folder, "--out", str(tmp_path / "r"), *EVAL]) == 2
    assert f"{folder}: a folder; name a checkpoint in it (e.g. {folder}/best.json)" in _err(capsys)
    (tmp_path / "scores.safetensors").write_text("{}")
    assert main(["fuse", str(tmp_path / "scores.safetensors"), str(tmp_path / "scores.safetensors")]) == 2
    assert "not a fine-tuning scores file" in _err(capsys)
