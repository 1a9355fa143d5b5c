"""Where and how a command's network runs, decided once per command from ``RuntimeOptions``.

``Runtime.setup(opts)`` starts torch.distributed under torchrun (gloo on CPU, nccl on GPU), picks
the device (``cuda:LOCAL_RANK`` with ``torch.cuda.set_device``, else the CPU), and chooses bf16,
channels_last_3d, torch.compile and activation checkpointing. ``announce()`` says the one line
about the choice, once per process and on rank 0 only, after the command's data checks (a run
that cannot start ends with its one error line). The helpers for sharding work over ranks and
gathering it back in order live here too, so every command runs the same way under torchrun.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from . import backbones
from .data.transforms import memory_format

log = logging.getLogger("vidssl")


def launched_main() -> bool:
    """Whether this process is rank 0 of its launch (before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local)  # before the process group: nccl binds each rank to its GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return 0, 1, 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA GPU (is a CUDA build of torch installed?)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively here (it may still be slower than fp32: see bf16_fast)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    check = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(f() for f in check if f is not None)


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast beats fp32 here: CUDA GPUs with bf16, and CPUs with AMX tiles.

    Measured on a 2-core CPU with AVX-512 bf16 but no AMX (bench/train_step.py): a 4096^3 matmul
    ran at 160 GFLOP/s in bf16 against 287 in fp32, and training steps were slower in bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


def bf16_choice(wanted: bool | None, device: torch.device) -> tuple[bool, str]:
    """(use bf16, why not what was asked or "") for ``--bf16`` unset (where faster), on (wherever
    it runs) or off."""
    if wanted is None:
        use = bf16_fast(device)
        lacks = "no bf16 support on this GPU" if device.type == "cuda" else "this CPU has no AMX"
        return use, "" if use else f"fp32 on {device}: bf16 is not faster here ({lacks}); --bf16 forces it"
    use = wanted and bf16_supported(device)
    return use, f"bf16 not supported on {device}: fp32" if wanted and not use else ""


_said: set[str] = set()


def check_compile(device: torch.device) -> None:
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ValueError(
            "--compile on CPU needs a C++ compiler (g++ or clang++) on PATH; install one or drop --compile"
        )
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise ValueError("--compile on CUDA needs triton (pip install triton); or drop --compile")


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    grad_checkpointing: bool = False
    why: str = ""  # the line announce() says, when the bf16 choice differs from what was asked

    @classmethod
    def setup(cls, opts) -> Runtime:
        """The runtime for a command's options (any object with RuntimeOptions' fields)."""
        rank, world, local = init_distributed()
        device = pick_device(opts.device, local)
        bf16, why = bf16_choice(opts.bf16, device)
        rt = cls(device, rank, world, local, bf16, opts.channels_last, getattr(opts, "compile", False),
                 getattr(opts, "grad_checkpointing", False), why)  # fmt: skip
        if rt.compile:
            check_compile(device)
        return rt

    @property
    def main(self) -> bool:
        return self.rank == 0

    def announce(self) -> None:
        if self.why and self.main and self.why not in _said:
            _said.add(self.why)
            log.warning(self.why)

    def describe(self) -> str:
        """e.g. 'cpu channels_last', 'cuda:0 bf16 x 4 processes'."""
        flags = [f for f, on in (("bf16", self.bf16), ("channels_last", self.channels_last)) if on]
        return " ".join([str(self.device), *flags]) + (f" x {self.world} processes" if self.world > 1 else "")

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory layout."""
        return memory_format(x.to(self.device, non_blocking=True), self.channels_last)

    def prepare(self, model: nn.Module, train: bool = False) -> nn.Module:
        """``model`` on the device in its memory layout; for training, SyncBatchNorm under multi-GPU
        DDP and --grad-checkpointing / --compile on ``model.backbone`` (in place: its state_dict keys
        stay the same, so checkpoints load with or without them)."""
        model = model.to(self.device)
        if train and self.world > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        backbone = getattr(model, "backbone", None)
        if train and backbone is not None:
            backbones.set_grad_checkpointing(backbone, self.grad_checkpointing)
            if self.compile:
                backbone.compile()
        return model

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def shard(self, n: int) -> list[int]:
        """This rank's share of ``n`` items (every ``world``-th, from ``rank``)."""
        return list(range(self.rank, n, self.world))

    def gather(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def run_sharded(self, dataset, fn):
        """``fn(part)`` on this rank's share of ``dataset`` (a ClipDataset), gathered back in the
        dataset's order on every rank. ``fn`` returns a tuple of tensors whose rows match
        ``part.records`` after it forgot the videos that failed (as extract_features does); those
        are forgotten in ``dataset`` too, whichever rank met them. One process: ``fn(dataset)``."""
        if self.world == 1:
            return fn(dataset)
        mine = self.shard(len(dataset))
        part = dataset.select(mine)
        where = {id(r): i for r, i in zip(part.records, mine)}  # records survive forget() as objects
        known = len(part.skipped)
        out = fn(part)
        kept = [where[id(r)] for r in part.records]
        failed = [(i, rel, reason) for i, (rel, reason) in zip(sorted(set(mine) - set(kept)), part.skipped[known:])]
        pieces = self.gather((kept, [t.cpu() for t in out], failed))
        order = torch.tensor([i for p in pieces for i in p[0]], dtype=torch.long).argsort()
        dataset.forget([f for p in pieces for f in p[2]])
        return tuple(torch.cat([p[1][j] for p in pieces])[order] for j in range(len(out)))
