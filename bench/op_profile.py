"""Profile of one default pretraining step: where the time goes, op by op (torch.profiler).

The step is `vidssl pretrain`'s default (rotation, all four angles, resnet18_3d, 3x16x112x112
clips, channels_last_3d, fp32 on a CPU without AMX), at --batch clips (x4 rotations), after one
warm-up step. Prints the ops by self time with their share of the step, and the share of the
groups that matter for speed: convolutions (forward and backward, compute-bound), batch norm and
elementwise ops (memory-bound: what a compiler would fuse), memory copies and layout changes, the
rest. Compare a variant with --no-channels-last.

    python bench/op_profile.py [--batch 8] [--backbone resnet18_3d] [--no-channels-last] [--trace trace.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vidssl.backbones import build  # noqa: E402
from vidssl.data.transforms import memory_format  # noqa: E402
from vidssl.report import format_table  # noqa: E402
from vidssl.tasks import (
    PretextModel,  # noqa: E402
    RotationTask,  # noqa: E402
)

GROUPS = {  # op-name fragments -> group (first match wins)
    "convolution": ("conv", "mkldnn_convolution"),
    "batch norm": ("batch_norm",),
    "elementwise (ReLU, add, pool)": ("threshold", "relu", "clamp", "add", "mul", "fill_", "max_pool", "zero_"),
    "copies and layout": ("copy_", "contiguous", "clone", "cat", "rot90", "flip", "to_dense", "as_strided", "empty"),
}


def group_of(name: str) -> str:
    for group, parts in GROUPS.items():
        if any(p in name for p in parts):
            return group
    return "other"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="clips per step (each rotated 4 times)")
    p.add_argument("--backbone", default="resnet18_3d")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--top", type=int, default=15, help="ops listed")
    p.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto)")
    p.add_argument("--json", default="bench/results/op_profile.json", help="where to write the results")
    args = p.parse_args()
    torch.manual_seed(0)
    backbone = build(args.backbone)
    model = PretextModel(backbone, RotationTask(backbone.num_features, "0,90,180,270", "all", "l1"))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = memory_format(torch.randn(args.batch, 3, 16, 112, 112), args.channels_last)

    def step(i: int) -> None:
        loss, _ = model(x, torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(0)  # warm-up: oneDNN picks its kernels on the first call
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(1)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)
    rows = [
        {
            "op": e.key,
            "group": group_of(e.key),
            "calls": e.count,
            "self s": e.self_cpu_time_total / 1e6,
            "% of step": 100 * e.self_cpu_time_total / total,
        }
        for e in ops[: args.top]
    ]
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    group_rows = [
        {"group": k, "self s": v / 1e6, "% of step": 100 * v / total}
        for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
    ]
    print(
        f"one rotation pretraining step: {args.backbone}, {args.batch} clips x 4 rotations, 3x16x112x112, "
        f"{'channels_last_3d' if args.channels_last else 'contiguous'}, fp32; {total / 1e6:.2f} s of self CPU time; "
        f"{torch.get_num_threads()} threads"
    )
    print(format_table(rows, ["op", "group", "calls", "self s", "% of step"]))
    print()
    print(format_table(group_rows, ["group", "self s", "% of step"]))
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "total_s": total / 1e6, "ops": rows, "groups": group_rows}, f, indent=1)


if __name__ == "__main__":
    main()
