"""Process faults: kills at any moment, a full disk, non-finite losses; and determinism."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from vidssl import checkpoint
from vidssl.data.synth import SynthConfig, generate
from vidssl.pretrain import PretrainConfig, pretrain

SMALL = SynthConfig(classes=3, groups=4, clips=2, frames=40, height=48, width=64, seed=7)
RUN = dict(backbone="r3d_10", width=0.25, frame_size=(40, 40), crop=32, clip_length=8, batch_size=4, lr=0.01)
RUN.update(val_videos=0, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("recovery"))
    generate(root, SMALL, progress=False)
    return root


class Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs."""


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def _saved(path):
    meta, weights = checkpoint.load_weights(path)
    return meta["step"], weights["weight"]


def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    old, new = _model(0), _model(1)
    opt = torch.optim.SGD(old.parameters(), lr=0.1)
    path = str(tmp_path / "last")
    real_replace = os.replace
    outcomes = set()
    for kill_at in range(7):  # 3 atomic writes then 3 renames: a kill before each rename, and none
        checkpoint.save(path, old, {"step": 1}, opt)
        calls = 0

        def replace(src, dst, kill_at=kill_at):
            nonlocal calls
            calls += 1
            if calls > kill_at:
                raise Killed
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            checkpoint.save(path, new, {"step": 2}, opt)
        except Killed:
            pass
        monkeypatch.setattr(os, "replace", real_replace)
        checkpoint.discard_unfinished(path)  # what --resume does first
        step, weight = _saved(path)
        want = {1: old.weight, 2: new.weight}[step]
        assert torch.equal(weight, want), f"kill after {kill_at} renames: weights of another save"
        meta = checkpoint.read_meta(path)
        state = load_file(path + ".state.safetensors")
        checkpoint.load_training_state(path, torch.optim.SGD(old.parameters(), lr=0.1))  # commit ids agree
        assert meta["step"] == step and "rng.cpu" in state
        outcomes.add(step)
        leftovers = [f for f in os.listdir(tmp_path) if ".new." in f]
        assert not leftovers, leftovers
    assert outcomes == {1, 2}  # early kills keep the old one, late ones complete the new one


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = str(tmp_path / "last")
    checkpoint.save(path, _model(0), {"step": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.save(path, _model(1), {"step": 2})
    monkeypatch.undo()
    msg = str(e.value)
    assert msg.startswith(path) and "No space left on device" in msg and "previous" in msg and "intact" in msg
    assert _saved(path)[0] == 1 and torch.equal(_saved(path)[1], _model(0).weight)
    assert sorted(os.listdir(tmp_path)) == ["last.json", "last.safetensors", "last.state.safetensors"]


def test_weights_of_another_save_are_refused(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    checkpoint.save(a, _model(0), {"step": 1})
    checkpoint.save(b, _model(1), {"step": 1})
    os.replace(b + ".safetensors", a + ".safetensors")  # a hand-made mix-up
    with pytest.raises(checkpoint.CheckpointError, match="weights of another save"):
        checkpoint.load_weights(a)


def _weights(out):
    return load_file(os.path.join(out, "checkpoints", "last.safetensors"))


def _step_reached(last: str) -> int:
    """The step of the last complete checkpoint, read without touching the files (-1: none yet)."""
    try:
        with open(last + ".json") as f:
            return json.load(f)["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(synth, tmp_path):
    iters = 150
    args = [sys.executable, "-m", "vidssl", "pretrain", synth, "--backbone", "r3d_10", "--width", "0.25"]
    args += ["--frame-size", "40x40", "--crop", "32", "--clip-length", "8", "--batch-size", "4", "--lr", "0.01"]
    args += ["--val-videos", "0", "--no-progress", "--no-tensorboard", "--workers", "0", "--iters", str(iters)]
    args += ["--ckpt-every", "1"]  # a checkpoint every step: many kills land in the middle of a save
    straight = str(tmp_path / "straight")
    subprocess.run([*args, "--out", straight], check=True, capture_output=True)
    out, last = str(tmp_path / "killed"), str(tmp_path / "killed" / "checkpoints" / "last")
    rng = random.Random(0)
    kills, steps_seen = 0, []
    # Kill once the run has passed each of 6 random steps, a random 0-60 ms later (any moment of a
    # step, saves included): tied to progress, not to time, so a slow or busy machine kills as often.
    for target in sorted(rng.sample(range(5, iters - 5), 6)):
        resume = ["--resume"] if os.path.exists(last + ".json") else []
        proc = subprocess.Popen([*args, "--out", out, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and _step_reached(last) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.06))
        if proc.poll() is not None:  # finished already (a fast machine): no kill this time
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        steps_seen.append(checkpoint.load_weights(last)[0]["step"])  # whole after every kill
    proc = subprocess.run([*args, "--out", out, "--resume"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"{kills} kills; last checkpoint after each: step {steps_seen}")
    assert kills >= 4 and steps_seen == sorted(steps_seen) and steps_seen[0] < iters, (kills, steps_seen)
    a, b = _weights(straight), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a), f"after {kills} kills the weights differ"
    assert json.load(open(os.path.join(out, "summary.json")))["steps"] == iters
    assert not [f for f in os.listdir(os.path.dirname(last)) if ".tmp" in f or ".new." in f]


def test_a_non_finite_loss_stops_naming_the_step_and_checkpoint_or_is_skipped(synth, tmp_path, monkeypatch):
    from vidssl.tasks import RotationTask

    real = RotationTask.loss
    calls = []

    def poisoned(self, out, targets):  # the losses of steps 3 and 5 are NaN
        calls.append(1)
        loss = real(self, out, targets)
        return loss * float("nan") if len(calls) in (4, 6) else loss

    monkeypatch.setattr(RotationTask, "loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3; last good checkpoint: .*last\.json"):
        pretrain(PretrainConfig(synth, out=str(tmp_path / "stop"), iters=8, ckpt_every=2, **RUN))
    assert checkpoint.read_meta(str(tmp_path / "stop" / "checkpoints" / "last"))["step"] == 2
    calls.clear()
    best = pretrain(PretrainConfig(synth, out=str(tmp_path / "skip"), iters=8, on_nan="skip", **RUN))
    meta = checkpoint.read_meta(best.replace("best", "last"))
    assert meta["step"] == 8 and meta["skipped_steps"] == 2
    assert all(torch.isfinite(w).all() for w in checkpoint.load_weights(best)[1].values())


def test_same_seed_same_losses_for_50_steps_with_workers(synth, tmp_path):
    def losses(name):
        out = str(tmp_path / name)
        pretrain(PretrainConfig(synth, out=out, iters=50, log_every=1, workers=2, **RUN))
        rows = [line.split(",") for line in open(os.path.join(out, "log.csv")).read().splitlines()]
        col = rows[0].index("loss")
        return [float(r[col]) for r in rows[1:] if r[rows[0].index("split")] == "train"]

    a, b = losses("a"), losses("b")
    assert len(a) == 50 and a == b
