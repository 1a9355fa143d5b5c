import csv

import numpy as np
import torch

from vidssl import backbones
from vidssl.visualize import attention, attention_figure, curves_figure, kernel_tiles, retrieval_figure


def is_png(path):
    return open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_kernel_tiles_normalise_each_kernel():
    w = torch.randn(5, 3, 2, 3, 3)
    w[1] *= 100  # a large kernel must not wash out the others
    img = kernel_tiles(w, pad=1)
    cols, rows = 3, 2  # 5 kernels in a near-square grid
    assert img.shape == (rows * 5, cols * (2 * 4 + 2), 3)
    first = img[1:4, 1:4]  # kernel 0, temporal slice 0
    np.testing.assert_allclose(
        first, w[0, :, 0].permute(1, 2, 0).sub(w[0].min()).div(w[0].max() - w[0].min()).numpy(), atol=1e-6
    )
    assert img.min() >= 0 and img.max() <= 1


def test_attention_marks_where_things_are(tmp_path):
    torch.manual_seed(0)
    model = backbones.build("r3d_10", width=0.25)
    clip = torch.full((3, 8, 32, 32), 100, dtype=torch.uint8)
    clip[:, :, 10:18, 12:20] = 250  # a bright square on a flat background
    from vidssl.data.transforms import normalize

    att = attention(model, normalize(clip))
    assert att.shape == (8, 32, 32) and att.min() >= 0 and att.max() <= 1
    assert abs(att[:, 10:18, 12:20].mean() - att[:, 25:, 25:].mean()) > 0.1
    path = attention_figure(model, clip, str(tmp_path / "att.png"))
    assert is_png(path)


def test_curves_and_retrieval_pictures(tmp_path):
    log = tmp_path / "log.csv"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "split", "loss", "acc"])
        for s in range(1, 6):
            w.writerow([s * 10, s, "train", 2 / s, s / 6])
            w.writerow([s * 10, s, "val", 2.2 / s, s / 7])
    assert is_png(curves_figure(str(log), str(tmp_path / "c.png")))
    img = np.zeros((12, 16, 3), np.uint8)
    rows = [{"query": (img, "Jump"), "neighbours": [(img, "Jump"), (img, "Fall")]}]
    assert is_png(retrieval_figure(rows, str(tmp_path / "r.png")))


def test_kernel_panels_are_titled_by_their_run():
    from vidssl.visualize import run_label

    assert run_label("runs/pt-rot/checkpoints/best.json") == "pt-rot (best)"
    assert run_label("runs/ft/seed0/checkpoints/last") == "ft/seed0 (last)"
    assert run_label("torchvision:/w/r3d_18-b3b3357e.pth") == "r3d_18-b3b3357e.pth"
