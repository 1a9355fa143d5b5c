"""`vidssl eval-pretext`: pretext loss and accuracy of pretraining checkpoints on any dataset
(3DRotNet Table 1 and Fig. 4b, VCOP Table 1), beside downstream accuracy when given.

The measurement is the training loop's own ``train.evaluate`` over the dataset; under torchrun the
videos are sharded over the ranks and the sums gathered.
"""

from __future__ import annotations

import csv
import json
import os

import torch
from torch.utils.data import Subset

from .checkpoint import load_pretext_model, read_meta
from .config import EvalPretextConfig, PretrainConfig, check_ranges, write_config
from .data.datasets import load_dataset
from .data.loading import FailureLog
from .data.loading import loader as data_loader
from .data.sampling import sample_seed
from .data.transforms import clip_frames, eval_transform, to_input
from .runs import claim
from .runtime import Runtime, launched_main
from .tasks import PretextModel
from .train import evaluate


def pretext_accuracy(
    model: PretextModel,
    cfg: PretrainConfig,
    dataset,
    draws: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    runtime: Runtime | None = None,
    progress: bool = False,
) -> dict:
    """Pretext loss and accuracy (and the task's other metrics) of a model on a dataset, each video
    ``draws`` times with new clips and targets, in eval mode. Targets are fixed per (seed, draw,
    video) and balanced over the classes, so the result does not depend on the batching or the
    number of processes."""
    rt = runtime or Runtime(next(model.parameters()).device)
    failures, per_draw = FailureLog(), []
    mine = torch.tensor(rt.shard(len(dataset)))
    part = Subset(dataset, mine.tolist()) if rt.world > 1 else dataset

    def step_fn(m, batch, step, train=False):  # step: the draw
        x = rt.input(to_input(batch.clips.to(rt.device), cfg.modality))
        index = mine[batch.index] if rt.world > 1 else batch.index  # the videos' dataset indices
        targets = model.task.fixed_targets(index, sample_seed(seed, step, 3))
        g = torch.Generator().manual_seed(sample_seed(seed, step, 2))  # "all" rotations draw nothing
        with rt.autocast():
            return m(x, g, targets)

    for d in range(draws):
        dataset.set_epoch(d)  # new clips each draw (a Subset reads the same dataset)
        title = f"pretext, draw {d + 1} of {draws}" if progress else None
        per_draw.append(evaluate(model, step_fn, data_loader(part, batch_size), d, failures, runtime=rt, bar=title))
    return {k: sum(m[k] for m in per_draw) / len(per_draw) for k in per_draw[0]}


def checkpoint_list(spec: str) -> list[str]:
    """Paths named in ``spec``; for a folder, its step-numbered checkpoints (else all), ordered by step."""
    if not os.path.isdir(spec):
        return [p.strip() for p in spec.split(",") if p.strip()]
    names = [f for f in os.listdir(spec) if f.endswith(".json")]
    names = [f for f in names if f.startswith("step")] or names
    if not names:
        raise FileNotFoundError(f"{spec}: no checkpoints (*.json) in this folder")
    paths = [os.path.join(spec, n) for n in names]
    return sorted(paths, key=lambda p: (read_meta(p).get("step", 0), p))


def downstream_top1(path: str) -> float:
    """Video top-1 of a fine-tuning result file (results.json of finetune, or of one seed)."""
    try:
        with open(path) as f:
            res = json.load(f)
        top1 = res["summary"]["video_top1"]["mean"] if "summary" in res else res["video_top1"]
        return float(top1)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: not a fine-tuning results.json (no video top-1: {e!r}); --downstream takes those"
        ) from None


def eval_pretext(cfg: EvalPretextConfig) -> list[dict]:
    """Pretext loss and accuracy of each checkpoint on a dataset, beside downstream accuracy if given."""
    check_ranges(cfg)
    claim(cfg.out, cfg, command="eval-pretext", overwrite=cfg.overwrite, rerun_ok=True, main=launched_main())
    rt = Runtime.setup(cfg)
    paths = checkpoint_list(cfg.checkpoints)
    downstream = [p.strip() for p in cfg.downstream.split(",")] if cfg.downstream else []
    if downstream and len(downstream) != len(paths):
        raise ValueError(f"--downstream names {len(downstream)} results for {len(paths)} checkpoints")
    rows = []
    for i, path in enumerate(paths):
        model, pcfg = load_pretext_model(path)
        model = rt.prepare(model)
        meta = read_meta(path)
        sampler = model.task.sampler(clip_frames(pcfg.clip_length, pcfg.modality))
        ds = load_dataset(
            cfg.kind,
            cfg.dataset,
            split=cfg.split,
            subset=cfg.subset,
            cache=cfg.cache,
            size=None if cfg.cache else meta["config"].get("frame_size"),
            sampler=sampler,
            transform=eval_transform(pcfg.crop),
            # Clip tuples skip short videos (VCOP's lists hold videos of >= 64 frames); one rotated
            # clip may loop a short video.
            on_short="loop" if getattr(sampler, "loopable", True) else "skip",
            progress=cfg.progress and rt.main,
        )
        rt.announce()
        m = pretext_accuracy(model, pcfg, ds, draws=cfg.draws, batch_size=cfg.batch_size, runtime=rt,
                             progress=cfg.progress)  # fmt: skip
        row = {
            "checkpoint": path,
            "step": meta.get("step"),
            "task": pcfg.task,
            "videos": len(ds),
            "skipped": len(ds.skipped),
            "pretext_loss": m["loss"],
            "pretext_acc": m["acc"],
        }
        if downstream:
            row["downstream_top1"] = downstream_top1(downstream[i])
        rows.append(row)
    if rt.main:
        write_config(cfg, cfg.out, "eval-pretext")
        with open(os.path.join(cfg.out, "pretext.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with open(os.path.join(cfg.out, "pretext.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows
