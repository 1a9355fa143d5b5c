"""Memory benchmark: peak RSS of default pretraining and fine-tuning per backbone, batch 8, on CPU.

Each run is `vidssl.pretrain` / `vidssl.finetune` with its defaults (16x112x112 clips, bf16 where
the CPU supports it) at batch 8 for --steps steps on a small synthetic set cached at 128x171, in a
fresh process with DataLoader workers off (so one process holds everything; each worker adds its
own ~0.3 GB of interpreter and torch). The reference row is the same process after importing torch
and vidssl and building the dataset, before any model exists: what every run pays anyway.

    python bench/memory.py [--backbones r3d_18,...] [--steps 3] [--json bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

TARGET_GB = 4.0


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def one(kind: str, backbone: str, data: str, cache: str, out: str, steps: int) -> dict:
    """Run one job in this process; returns its peak RSS."""
    if kind == "baseline":
        import vidssl.pretrain  # noqa: F401
        from vidssl.data.datasets import ucf101  # noqa: F401

        ucf101(data, 1, "train", cache=cache, progress=False)
        return {"peak_gb": peak_gb()}
    kind, _, variant = kind.partition("+")  # "rotation+grad-checkpointing": the memory-saving option
    common = dict(batch_size=8, iters=steps, workers=0, progress=False, tensorboard=False, cache=cache)
    common["grad_checkpointing"] = variant == "grad-checkpointing"
    if kind in ("rotation", "clip_order"):
        from vidssl.pretrain import PretrainConfig, pretrain

        pretrain(PretrainConfig(data, out=out, task=kind, backbone=backbone, val_videos=8, **common))
    else:
        from vidssl.finetune import FinetuneConfig, finetune

        finetune(FinetuneConfig(data, out=out, backbone=backbone, test_clips=2, frame_size=None, **common))
    return {"peak_gb": peak_gb()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="c3d,r3d_10,r21d_10,r3d_18,resnet18_3d", help="comma-separated")
    p.add_argument("--steps", type=int, default=3, help="training steps per run")
    p.add_argument("--json", default="bench/results/memory.json", help="where to write the results")
    p.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, backbone, data, cache, out = args.one
        print(json.dumps(one(kind, backbone, data, cache, out, args.steps)))
        return

    from vidssl.data.synth import SynthConfig, generate
    from vidssl.preprocess import PreprocessConfig, preprocess
    from vidssl.report import format_table

    work = tempfile.mkdtemp(prefix="vidssl-bench-")
    try:
        data, cache = os.path.join(work, "synth"), os.path.join(work, "cache")
        generate(data, SynthConfig(classes=4, groups=6, clips=2), progress=False)
        preprocess(PreprocessConfig(data, cache, size=(128, 171), progress=False))

        def run(kind, backbone):
            out = os.path.join(work, f"{kind}-{backbone}")
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--one", kind, backbone, data, cache, out]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            return json.loads(res.stdout.strip().splitlines()[-1])["peak_gb"]

        base = run("baseline", "-")
        rows = [{"job": "baseline (imports + dataset)", "backbone": "-", "peak GB": base}]
        for backbone in args.backbones.split(","):
            for kind in ("rotation", "clip_order", "finetune"):
                gb = run(kind, backbone)
                rows.append({"job": kind, "backbone": backbone, "peak GB": gb, "above baseline": gb - base})
                print(f"{kind} {backbone}: {gb:.2f} GB", file=sys.stderr, flush=True)
                if gb > TARGET_GB:  # what --grad-checkpointing brings it down to
                    job = kind + "+grad-checkpointing"
                    gb = run(job, backbone)
                    rows.append({"job": job, "backbone": backbone, "peak GB": gb, "above baseline": gb - base})
                    print(f"{job} {backbone}: {gb:.2f} GB", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in rows:
        r["<= 4 GB"] = "yes" if r["peak GB"] <= TARGET_GB else "NO"
    print(
        f"peak RSS, batch 8 (rotation: 8 clips x 4 rotations; clip order: 8 tuples of 3 clips), 16x112x112, "
        f"{args.steps} steps, workers off"
    )
    print(format_table(rows, ["job", "backbone", "peak GB", "above baseline", "<= 4 GB"]))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
