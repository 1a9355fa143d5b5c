import os
import shutil

import numpy as np
import pytest

from vidssl.config import PretrainConfig
from vidssl.data.synth import SynthConfig, generate
from vidssl.data.video import write_video
from vidssl.pretrain import pretrain

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
UCF_SAMPLE = os.path.join(SHARED_DATA, "ucf101-sample", "UCF-101")
HMDB_SAMPLE = os.path.join(SHARED_DATA, "hmdb51-sample")

needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data (real sample clips) is absent")

# A tiny synthetic dataset: 3 classes x 3 groups x 2 clips of 40 frames at 48x64 (18 videos).
TINY = SynthConfig(classes=3, groups=3, clips=2, frames=40, height=48, width=64, seed=3)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    generate(out, TINY, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def pretrained(tiny_synth, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pre"))
    return pretrain(
        PretrainConfig(
            tiny_synth,
            out=out,
            backbone="r3d_10",
            width=0.25,
            clip_length=8,
            batch_size=4,
            iters=4,
            lr=0.01,
            val_videos=2,
            workers=0,
            tensorboard=False,
            keep_every=2,
            frame_size=(40, 40),
            crop=32,
            progress=False,
        )
    )


@pytest.fixture
def make_video(tmp_path):
    """Write a small real video whose frame i shows the number i (so frames are identifiable)."""

    def make(name="v.avi", frames=30, h=32, w=48, codec="mpeg4"):
        rng = np.random.default_rng(frames)
        arr = rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8) // 4
        for i in range(frames):  # a bright bar whose position encodes i
            arr[i, :, (i * 3) % w : (i * 3) % w + 3] = 250
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, arr, fps=25, codec=codec)
        return str(path)

    return make


def copy_sample(src: str, dst_dir, name: str | None = None) -> str:
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, name or os.path.basename(src))
    shutil.copy(src, dst)
    return dst
