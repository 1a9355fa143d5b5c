"""Pipeline benchmark: is the loader ever the bottleneck of a pretraining step?

Rotation pretraining with its defaults (resnet18_3d, 16x112x112 crops of frames cached as JPEG at
136x136, batch 8 clips x 4 rotations), on a synthetic set:
  loader  the real DataLoader alone (cache -> clip -> crop/flip -> uint8 batch), 0..N workers
  model   the training step alone on a batch already in memory (to_input, 4 rotations, forward,
          backward, SGD step), at vidssl's defaults (bf16 where faster, channels_last_3d)
  full    both together, as `vidssl pretrain` runs them, at the default worker count
"loader / model" is the loader's clips/s over the model's: >= 1.5 means the loader keeps up with room
to spare. The per-core loader rate says how many workers a faster device needs:
workers = its model clips/s / the loader's clips/s per core.

    python bench/pipeline.py [--seconds 8] [--json bench/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.backbones import build  # noqa: E402
from vidssl.data.datasets import ucf101  # noqa: E402
from vidssl.data.sampling import RandomClip  # noqa: E402
from vidssl.data.synth import SynthConfig, generate  # noqa: E402
from vidssl.data.transforms import memory_format, to_input, train_transform  # noqa: E402
from vidssl.preprocess import PreprocessConfig, preprocess  # noqa: E402
from vidssl.report import format_table  # noqa: E402
from vidssl.runtime import bf16_fast  # noqa: E402
from vidssl.tasks import PretextModel  # noqa: E402
from vidssl.tasks.rotation import RotationTask  # noqa: E402

BATCH = 8


def timed(batches, seconds: float, work=lambda b: None) -> float:
    """Clips/s over about ``seconds`` of ``batches`` (two warm-up batches not counted)."""
    n, start, it = 0, None, iter(batches)
    for i, b in enumerate(it):
        work(b)
        if i == 1:
            start = time.perf_counter()
        elif i > 1:
            n += b[0].shape[0]
            if time.perf_counter() - start > seconds:
                break
    return n / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0, help="time per measurement")
    p.add_argument("--json", default="bench/results/pipeline.json", help="where to write the results")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    default_workers = min(cores, 8)  # what pretrain picks
    work = tempfile.mkdtemp(prefix="vidssl-bench-")
    try:
        data, cache = os.path.join(work, "synth"), os.path.join(work, "cache")
        generate(data, SynthConfig(groups=4, clips=2), progress=False)
        preprocess(PreprocessConfig(data, cache, size=(136, 136), progress=False))
        ds = ucf101(
            data, 1, "train", cache=cache, sampler=RandomClip(16), transform=train_transform(112), progress=False
        )

        def loader(workers, persistent=True):
            return DataLoader(
                ds, BATCH, shuffle=True, num_workers=workers, drop_last=True,
                persistent_workers=persistent and workers > 0, generator=torch.Generator().manual_seed(0),
            )  # fmt: skip

        # What persistent workers would save: vidssl's loop starts its workers afresh every epoch
        # (they must see the dataset's new epoch). Cost = first batch of a new epoch's iterator.
        restart = {}
        for persistent in (False, True):
            dl = loader(default_workers, persistent)
            next(iter(dl))  # start-up of the first epoch is paid either way
            starts = []
            for _ in range(3):
                t = time.perf_counter()
                next(iter(dl))
                starts.append(time.perf_counter() - t)
            restart[persistent] = min(starts)

        rows = []
        for w in range(0, cores + 1):
            rate = timed(forever(loader(w)), args.seconds)
            rows.append({"part": "loader", "workers": w, "clips/s": rate, "clips/s per core": rate / max(w, 1)})
            print(f"loader {w} workers: {rate:.1f} clips/s", file=sys.stderr, flush=True)

        torch.manual_seed(0)
        backbone = build("resnet18_3d")
        model = PretextModel(backbone, RotationTask(backbone.num_features))
        model = model.to(memory_format=torch.channels_last_3d)  # pretrain's default
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        bf16 = bf16_fast(torch.device("cpu"))
        g = torch.Generator().manual_seed(0)

        def step(batch):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss, _ = model(memory_format(to_input(batch[0]), True), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        fixed = next(iter(loader(0)))
        model_rate = timed((fixed for _ in iter(int, 1)), args.seconds, step)
        rows.append({"part": "model step", "workers": "-", "clips/s": model_rate})
        print(f"model: {model_rate:.1f} clips/s", file=sys.stderr, flush=True)
        full = timed(forever(loader(default_workers)), args.seconds, step)
        rows.append({"part": "full step", "workers": default_workers, "clips/s": full})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loader_default = next(r["clips/s"] for r in rows if r["part"] == "loader" and r["workers"] == default_workers)
    per_core = rows[0]["clips/s"]  # one process does everything: the per-core rate
    for r in rows:
        if r["part"] == "loader":
            r["loader / model"] = r["clips/s"] / model_rate
    print(
        f"rotation pretraining, resnet18_3d, batch {BATCH} x 4 rotations, 16x112x112 from 136x136 JPEG cache; "
        f"{cores} cores; {'bf16' if bf16 else 'fp32'}; default workers {default_workers}"
    )
    print(format_table(rows, ["part", "workers", "clips/s", "clips/s per core", "loader / model"]))
    print(
        f"loader at the default worker count / model = {loader_default / model_rate:.1f}; full step runs at "
        f"{100 * full / model_rate:.0f}% of the model alone. One loader core sustains {per_core:.0f} clips/s: "
        f"a device doing N clips/s needs about N / {per_core:.0f} workers."
    )
    print(
        f"first batch of an epoch at {default_workers} workers: {restart[False]:.3f} s with fresh workers (vidssl), "
        f"{restart[True]:.3f} s with persistent ones: {restart[False] - restart[True]:.3f} s per epoch"
    )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "epoch_start_s": {"fresh": restart[False], "persistent": restart[True]}}, f, indent=1)


if __name__ == "__main__":
    main()
