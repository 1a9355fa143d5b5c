"""Training-step benchmark: every backbone at 3x16x112x112, batch 8, against a plain fp32 loop.

For each backbone and path: forward + backward + SGD step time, clips/s, achieved GFLOP/s (FLOPs
counted by torch.utils.flop_counter on one step: 2 per multiply-add, convolutions and matmuls) and
that as a share of this machine's peak, measured in the same run with large square matmuls (fp32
and bf16). Inference rows (forward only, no_grad: feature extraction) the same way.

Paths:
  reference  eager fp32, contiguous memory (the reference implementations' way)
  bf16       vidssl's bf16 path: autocast to bf16, conv4/conv5 kept in fp32 on CPU (see backbones.run_blocks)
  fp32-cl    fp32 with channels_last_3d memory
  bf16-cl    bf16 with channels_last_3d memory
  PATH+compile             the same with the backbone torch.compile'd (compile time reported apart)
  PATH+grad-checkpointing  the same with --grad-checkpointing (training rows: the time it costs)
  (default)  marks the path vidssl's commands take on this machine: channels_last_3d, and bf16 on
             CUDA and on CPUs with AMX, else fp32 (vidssl.pretrain.bf16_fast); "x ref": speed-up
             over the reference

    python bench/train_step.py [--backbones r3d_18,r3d_10] [--steps 3] [--device cuda]
                               [--paths reference,fp32-cl,fp32-cl+compile] [--json bench/results/train_step.json]
    python bench/train_step.py --backbones r3d_10 --width 0.25 --clip 16x56x56 --batch 8   # the CPU recipes' size

On a GPU (--device cuda, the default when one is there) the rows and peaks are the GPU's, timed
with torch.cuda.synchronize.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.backbones import build, set_grad_checkpointing  # noqa: E402
from vidssl.report import format_table  # noqa: E402
from vidssl.runtime import bf16_fast, pick_device  # noqa: E402

SHAPE = (3, 16, 112, 112)
BATCH, CLASSES, WIDTH = 8, 101, 1.0  # --clip, --batch and --width replace SHAPE, BATCH and WIDTH


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, seconds: float = 3.0) -> float:
    """GFLOP/s of an n x n x n matmul in ``dtype`` (the machine's practical peak for that type)."""
    n = 8192 if device.type == "cuda" else n  # a GPU needs a bigger matmul to be busy
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def model_and_head(name: str, channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = build(name, WIDTH)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, CLASSES))
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def count_flops(name: str, train: bool) -> float:
    """FLOPs of one step (forward + backward, or forward only), counted on the meta device."""
    with torch.device("meta"):
        model = model_and_head(name, False)
        x = torch.empty(BATCH, *SHAPE)
        y = torch.zeros(BATCH, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return float(counter.get_total_flops())


def step_time(name: str, path: str, train: bool, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, seconds of the first step): the fastest of ``steps`` steps after the first,
    which pays warm-up (and compilation, for +compile)."""
    path, _, option = path.partition("+")
    channels_last = path.endswith("-cl")
    bf16 = path.startswith("bf16")
    model = model_and_head(name, channels_last).to(device)
    set_grad_checkpointing(model[0], option == "grad-checkpointing")
    if option == "compile":
        model[0].compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *SHAPE, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(CLASSES, (BATCH,), generator=g).to(device)
    model.train(train)
    times = []
    for _ in range(steps + 1):
        sync(device)
        t = time.perf_counter()
        if train:
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                model(x)
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times[1:]), times[0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="c3d,r3d_10,r21d_10,r3d_18,resnet18_3d", help="comma-separated")
    p.add_argument("--paths", default="reference,bf16,fp32-cl,bf16-cl", help="comma-separated")
    p.add_argument("--steps", type=int, default=2, help="timed steps per row (the fastest is kept)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when there")
    p.add_argument("--json", default="bench/results/train_step.json", help="where to write the results")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (the CPU recipes: 0.25)")
    p.add_argument("--clip", default="16x112x112", help="frames x height x width of a clip")
    p.add_argument("--batch", type=int, default=8, help="clips per step")
    args = p.parse_args()
    global SHAPE, BATCH, WIDTH
    SHAPE, BATCH, WIDTH = (3, *(int(v) for v in args.clip.split("x"))), args.batch, args.width
    device = pick_device(args.device)
    peak = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    chosen = "bf16-cl" if bf16_fast(device) else "fp32-cl"
    rows = []
    for name in args.backbones.split(","):
        for train in (True, False):
            flops = count_flops(name, train)
            ref = None
            for path in args.paths.split(","):
                if "grad-checkpointing" in path and not train:
                    continue  # no backward pass, nothing recomputed
                s, first = step_time(name, path, train, args.steps, device)
                ref = ref or s
                gflops = flops / s / 1e9
                rows.append(
                    {
                        "backbone": name,
                        "step": "train" if train else "inference",
                        "path": path + (" (default)" if path == chosen else ""),
                        "s/step": s,
                        "clips/s": BATCH / s,
                        "GFLOP/step": flops / 1e9,
                        "GFLOP/s": gflops,
                        "% bf16 peak": 100 * gflops / peak["bf16"],
                        "% fp32 peak": 100 * gflops / peak["fp32"],
                        "x ref": ref / s,
                        "first step s": first,
                    }
                )
                print(f"{name} {rows[-1]['step']} {path}: {s:.2f} s/step", file=sys.stderr, flush=True)
    print(
        f"batch {BATCH} x {SHAPE}, width {WIDTH:g}; {device_name(device)}; "
        f"torch {torch.__version__}; "
        f"matmul peak fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s; "
        f"default on this machine: {chosen}"
    )
    cols = [
        "backbone",
        "step",
        "path",
        "s/step",
        "clips/s",
        "GFLOP/step",
        "GFLOP/s",
        "% bf16 peak",
        "% fp32 peak",
        "x ref",
        "first step s",
    ]
    print(format_table(rows, cols))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        info = {"device": device_name(device), "clip": SHAPE, "batch": BATCH, "width": WIDTH, "peak_gflops": peak}
        json.dump({**info, "default": chosen, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
