"""DataLoaders that survive a video failing in the middle of a run.

Datasets check every video when they are built (vidssl.data.datasets), but some faults only show
when a clip is decoded: a stream that is damaged past its first frames, a cache entry that rotted.
``loader`` wraps a dataset so that such a sample is left out of its batch instead of killing the
run (or a DataLoader worker); the batch says which samples it holds and which failed, and
``FailureLog`` turns failures into one warning per video and a count for the run's summary.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from .video import VideoError

log = logging.getLogger("vidssl")


class Batch(NamedTuple):
    clips: torch.Tensor  # the samples that could be read, collated
    labels: torch.Tensor
    index: torch.Tensor  # their dataset indices
    failed: list[tuple[int, str, str]]  # (index, path, one-line reason) of those that could not


class _Guarded(Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            clip, label = self.dataset[i]
        except VideoError as e:
            return i, None, None, (e.path, str(e))
        return i, clip, label, None


def collate(samples) -> Batch:
    ok = [s for s in samples if s[3] is None]
    failed = [(s[0], *s[3]) for s in samples if s[3] is not None]
    if ok:
        clips, labels = default_collate([(s[1], s[2]) for s in ok])
    else:  # every sample of this batch failed
        clips, labels = torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return Batch(clips, labels, torch.tensor([s[0] for s in ok], dtype=torch.long), failed)


def leave_signals_to_the_main_process(worker_id: int = 0) -> None:
    """Worker start: Ctrl-C (sent to the whole terminal group) is the main process's to handle; it
    stops its workers in order. A worker interrupted mid-task instead leaves a pool waiting for it
    forever (measured: `preprocess --workers 2` hung on Ctrl-C). SIGTERM keeps its default: pools
    and loaders stop their workers with it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def loader(dataset, batch_size: int, **kwargs) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``Batch``es; unreadable samples are left out."""
    kwargs.setdefault("worker_init_fn", leave_signals_to_the_main_process)
    return DataLoader(_Guarded(dataset), batch_size, collate_fn=collate, **kwargs)


class FailureLog:
    """Videos that failed mid-run: one warning line the first time each fails, and their count."""

    def __init__(self):
        self.reasons: dict[str, str] = {}

    def note(self, failed) -> None:
        for _, path, reason in failed:
            if path not in self.reasons:
                self.reasons[path] = reason
                log.warning("skipping %s (failed mid-run; left out of its batches)", reason)

    def __len__(self) -> int:
        return len(self.reasons)
