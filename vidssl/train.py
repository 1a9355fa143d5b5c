"""The training loop shared by the commands: one short loop you can read on a screen.

``fit`` runs SGD steps of ``step_fn(model, batch, step) -> (loss, metrics)`` over a dataset with
a pure learning-rate schedule ``lr_at(step)``, validates every epoch (and at the end), keeps the
best checkpoint by validation loss and the last one, checkpoints every ``ckpt_every`` steps, and
resumes from the last checkpoint to exactly the state an uninterrupted run would have (model,
optimiser, RNG, step, data position). Single process or DDP under torchrun.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler
from tqdm import tqdm

from . import checkpoint
from .data.loading import FailureLog
from .data.loading import loader as data_loader

log = logging.getLogger("vidssl")


@dataclass
class LoopConfig:
    batch_size: int
    total_steps: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_every: int = 0  # steps between x lr_gamma decays (0: constant)
    lr_milestones: tuple[int, ...] = ()  # steps of the x lr_gamma decays instead (torchvision's MultiStepLR)
    lr_gamma: float = 0.1
    optimizer: str = "sgd"  # sgd (the papers) or adamw
    schedule: str = "step"  # step decay (the papers) or cosine to 0 over total_steps
    warmup: int = 0  # steps of linear warm-up
    workers: int = 2
    ckpt_every: int = 1000
    log_every: int = 10
    keep_every: int = 0  # also keep a step-numbered checkpoint every N steps (0: never)
    seed: int = 0
    progress: bool = True
    tensorboard: bool = True
    on_nan: str = "stop"  # a non-finite loss: stop (naming the step and last checkpoint) or skip the batch


def loop_config(opts, *, batch_size: int, total_steps: int, workers: int, seed: int, **resolved) -> LoopConfig:
    """The loop's settings from a command's LoopOptions fields; ``resolved`` gives the values a
    command decided itself (e.g. lr and lr_decay_every from the paper defaults)."""
    milestones = tuple(getattr(opts, "lr_milestones", ()) or ())
    if milestones and (opts.schedule != "step" or list(milestones) != sorted(set(milestones)) or milestones[0] < 0):
        given = " ".join(map(str, milestones))
        raise ValueError(f"--lr-milestones {given}: increasing step numbers, with --schedule step")
    return LoopConfig(
        batch_size=batch_size,
        total_steps=total_steps,
        lr=resolved.pop("lr", opts.lr),
        momentum=opts.momentum,
        weight_decay=opts.weight_decay,
        lr_decay_every=resolved.pop("lr_decay_every", opts.lr_decay_every),
        lr_milestones=milestones,
        optimizer=opts.optimizer,
        schedule=opts.schedule,
        warmup=opts.warmup,
        workers=workers,
        ckpt_every=opts.ckpt_every,
        log_every=opts.log_every,
        keep_every=resolved.pop("keep_every", 0),
        seed=seed,
        progress=opts.progress,
        tensorboard=opts.tensorboard,
        on_nan=opts.on_nan,
        **resolved,
    )


def lr_at(step: int, cfg: LoopConfig) -> float:
    """The learning rate at a step, a pure function of it: linear warm-up, then step decay
    (``lr * gamma ** (step // every)``, or ``gamma`` at each of ``lr_milestones``) or cosine to 0 at
    ``total_steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "cosine":
        t = (step - cfg.warmup) / max(cfg.total_steps - cfg.warmup, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if cfg.lr_milestones:
        return cfg.lr * cfg.lr_gamma ** sum(step >= m for m in cfg.lr_milestones)
    if cfg.lr_decay_every <= 0:
        return cfg.lr
    return cfg.lr * cfg.lr_gamma ** (step // cfg.lr_decay_every)


class EpochSampler(Sampler):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch (for resume).

    Like DistributedSampler, every sample is seen once per epoch across ranks (the tail that does
    not fill a batch on every rank is dropped, as drop_last does)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = (
            n,
            batch_size,
            seed,
            rank,
            world,
            shuffle,
        )
        self.epoch, self.skip_batches = 0, 0
        self.batches_per_epoch = n // (batch_size * world)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        used = self.batches_per_epoch * self.batch_size * self.world
        mine = order[:used][self.rank :: self.world]
        return iter(mine[self.skip_batches * self.batch_size :].tolist())

    def __len__(self):
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


class CsvLog:
    """Rows of scalars to a CSV; a row with a new column rewrites the file with a wider header."""

    def __init__(self, path: str):
        self.path = path

    def write(self, row: dict) -> None:
        rows, fields = [], []
        if os.path.exists(self.path):
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                fields = list(reader.fieldnames or [])
                if set(row) - set(fields):
                    rows = list(reader)
        if os.path.exists(self.path) and not set(row) - set(fields):
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
            return
        fields += [k for k in row if k not in fields]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows + [row])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    step_fn,
    loader,
    step: int,
    failures: FailureLog | None = None,
    runtime=None,
    bar: str | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over a loader of Batches, in eval mode (nothing in the model changes).
    With a multi-process ``runtime``, each rank's loader holds its share and the means are over all.
    ``bar``: a progress bar with that title (on rank 0)."""
    was = model.training
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    show = bar is not None and (runtime is None or runtime.main)
    for batch in tqdm(loader, desc=bar, disable=not show, leave=False, dynamic_ncols=True):
        if failures is not None:
            failures.note(batch.failed)
        if len(batch.clips) == 0:
            continue
        loss, metrics = step_fn(model, batch, step, train=False)
        b = batch[0].shape[0]
        for k, v in {"loss": loss.item(), **metrics}.items():
            totals[k] = totals.get(k, 0.0) + v * b
        n += b
    model.train(was)
    if runtime is not None and runtime.world > 1:
        names = sorted(totals)  # every rank has the same keys (the same task)
        summed = runtime.sum([totals[k] for k in names] + [n])
        totals, n = dict(zip(names, summed[:-1])), summed[-1]
    return {k: v / max(n, 1) for k, v in totals.items()}


def ranks_in_sync(model: nn.Module) -> bool:
    """True when every DDP rank holds bit-identical weights (compares per-tensor checksums)."""
    with torch.no_grad():
        sums = torch.stack(
            [
                p.detach()
                .double()
                .flatten()
                .dot(torch.arange(1, p.numel() + 1, dtype=torch.float64, device=p.device) / p.numel())
                for p in model.parameters()
            ]
        )
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def _finite_everywhere(loss: torch.Tensor, world: int, device: torch.device) -> bool:
    """Whether the loss is finite on every rank (ranks must skip a batch together, or DDP hangs)."""
    bad = torch.tensor(0.0 if torch.isfinite(loss) else 1.0, device=device)
    if world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    return not bool(bad)


def _grads_finite(params) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.stack([g.float().abs().sum() for g in grads]).sum())) if grads else True


def fit(
    model: nn.Module,
    step_fn,
    train_set,
    val_set,
    cfg: LoopConfig,
    out: str,
    meta: dict,
    runtime,
    resume: bool = False,
) -> dict:
    """Train ``model`` (on ``runtime``'s device, DDP under torchrun); returns a summary with the
    paths of the best and last checkpoints."""
    rank, world, device = runtime.rank, runtime.world, runtime.device
    main = runtime.main
    ckpt_dir = os.path.join(out, "checkpoints")
    if main:
        os.makedirs(out, exist_ok=True)
    sampler = EpochSampler(len(train_set), cfg.batch_size, cfg.seed, rank, world)
    if sampler.batches_per_epoch == 0:
        raise ValueError(
            f"{len(train_set)} training videos do not fill one batch of {cfg.batch_size} "
            f"on {world} process(es); lower --batch-size"
        )
    # Loaders get their own generator: creating an iterator must not draw from the global RNG
    # (dropout's), or a resumed run would diverge from an uninterrupted one.
    loader_kw = dict(
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    loader = data_loader(train_set, cfg.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    val_loader = data_loader(val_set, cfg.batch_size, shuffle=False, **loader_kw) if val_set is not None else None
    failures = FailureLog()  # videos that fail mid-run: left out of their batches, warned once, counted
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    step, best, skipped_steps = 0, math.inf, 0
    last = os.path.join(ckpt_dir, "last")
    if resume:
        checkpoint.discard_unfinished(last)  # a save killed before its files were complete
        m = checkpoint.read_meta(last)
        checkpoint.check_compatible(last, m, {k: meta[k] for k in ("backbone", "width", "task")})
        _, weights = checkpoint.load_weights(last)
        checkpoint.load_strictly(model, weights, f"{last}.json: weights do not fit this run's model")
        checkpoint.load_training_state(last, opt)
        step, best, skipped_steps = m["step"], m.get("best_val_loss", math.inf), m.get("skipped_steps", 0)
        if main:
            log.warning("resuming %s at step %d of %d", last, step, cfg.total_steps)
        if main and m.get("bf16") is not None and meta.get("bf16") is not None and m["bf16"] != meta["bf16"]:
            # --bf16 unset picks by the machine (bf16 with AMX or on CUDA): a run moved between machines
            # would otherwise continue in another precision without a word.
            was, now, keep = ("bf16", "fp32", "--bf16") if m["bf16"] else ("fp32", "bf16", "--no-bf16")
            log.warning("%s.json trained in %s; it continues in %s here (%s keeps %s)", last, was, now, keep, was)
    train_model = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    writer = None
    if main and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(out, "tb"), purge_step=step or None)
        settings = meta.get("config") or {}
        rows = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in settings.items())  # the resolved config
        writer.add_text("config", "| option | value |\n|---|---|\n" + rows, step)
    csv_log = CsvLog(os.path.join(out, "log.csv")) if main else None

    def record(split: str, values: dict, epoch: int) -> None:
        if not main:
            return
        csv_log.write({"step": step, "epoch": epoch, "split": split, **values})
        if writer:
            for k, v in values.items():
                writer.add_scalar(f"{split}/{k}", v, step)

    def save(name: str, epoch: int, metrics: dict) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # never store a diverged model
            raise FloatingPointError(
                f"the weights hold NaN/inf at step {step}; nothing saved over {os.path.join(ckpt_dir, name)}.json "
                "(a lower --lr, or --resume from the last good checkpoint)"
            )
        if main:
            checkpoint.save(
                os.path.join(ckpt_dir, name),
                model,
                {
                    **meta,
                    "step": step,
                    "epoch": epoch,
                    "metrics": metrics,
                    "best_val_loss": best,
                    "skipped_steps": skipped_steps,
                },
                opt,
            )
        if world > 1:
            dist.barrier()

    per_epoch = sampler.batches_per_epoch
    bar = tqdm(
        total=cfg.total_steps, initial=step, desc="train", disable=not (main and cfg.progress), dynamic_ncols=True
    )
    model.train()
    val_metrics: dict = {}
    last_train: dict = {}
    while step < cfg.total_steps:
        epoch, pos = divmod(step, per_epoch)
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, skip_batches=pos)
        tick, seen = time.perf_counter(), 0
        for batch in loader:
            failures.note(batch.failed)
            if len(batch.clips) == 0:  # every video of this batch failed to decode: nothing to learn from
                continue
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss, metrics = step_fn(train_model, batch, step, train=True)
            if not _finite_everywhere(loss, world, device):
                if cfg.on_nan != "skip":
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {step}; last good checkpoint: "
                        f"{last + '.json' if os.path.exists(last + '.json') else 'none yet'} "
                        "(--resume continues from it; --on-nan skip skips such batches)"
                    )
                if main:
                    log.warning("loss is %s at step %d: batch skipped (--on-nan skip)", loss.item(), step)
                skipped_steps += 1
            else:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if _grads_finite(params):
                    opt.step()
                else:  # bf16 on CPU occasionally yields inf gradients (shared/notes): skip, count
                    skipped_steps += 1
            step += 1
            seen += batch[0].shape[0] * world
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                rate = seen / (time.perf_counter() - tick)
                last_train = {"loss": loss.item(), **metrics}
                record(
                    "train", {"loss": loss.item(), **metrics, "lr": lr_at(step - 1, cfg), "clips_per_s": rate}, epoch
                )
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{metrics.get('acc', 0):.2f}", clips_s=f"{rate:.0f}")
            bar.update()
            if step % cfg.ckpt_every == 0:
                save("last", epoch, metrics)
            if cfg.keep_every and step % cfg.keep_every == 0:
                save(f"step{step:07d}", epoch, metrics)
            if step >= cfg.total_steps or step % per_epoch == 0:
                break
        if val_loader is not None and (step % per_epoch == 0 or step >= cfg.total_steps):
            title = "validation" if cfg.progress else None
            val_metrics = evaluate(model, step_fn, val_loader, step, failures, bar=title) if main else {}
            record("val", val_metrics, epoch)
            if main:
                tqdm.write(
                    f"epoch {epoch} step {step}: val loss {val_metrics['loss']:.4f} acc {val_metrics.get('acc', 0):.3f}"
                )
                if val_metrics["loss"] < best:
                    best = val_metrics["loss"]
                    save("best", epoch, val_metrics)
                elif world > 1:
                    dist.barrier()
            elif world > 1:
                dist.barrier()
        save("last", epoch, val_metrics)
    bar.close()
    if writer:  # the run's settings beside its final numbers (TensorBoard's HPARAMS tab)
        plain = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in settings.items()}
        final = {f"final/{s}_{k}": v for s, d in (("val", val_metrics), ("train", last_train)) for k, v in d.items()}
        writer.add_hparams(plain, final or {"final/steps": step}, run_name=".", global_step=step)
        writer.close()
    in_sync = ranks_in_sync(model) if world > 1 else True
    best_path = os.path.join(ckpt_dir, "best.json")
    return {
        "best": best_path if os.path.exists(best_path) else last + ".json",
        "last": last + ".json",
        "steps": step,
        "best_val_loss": best,
        "val": val_metrics,
        "skipped_steps": skipped_steps,
        "failed_videos": dict(failures.reasons),
        "world_size": world,
        "ranks_in_sync": in_sync,
    }
