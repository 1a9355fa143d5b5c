"""Datasets described by a manifest: ``root/manifest.csv`` with columns ``path,label,person``
(e.g. the Weizmann actions, 10 actions x 9 persons), split by person into 3 folds."""

from __future__ import annotations

import csv
import logging
import os

from .datasets import MANIFEST, ClipDataset, VideoRecord
from .splits import SplitError, dedupe, resolve_entries, safe_relpath

log = logging.getLogger("vidssl")
FOLDS = 3  # --split 1..3, as UCF101's and HMDB51's splits; 4..6 are their validation splits


def manifest(root, split: int = 1, subset: str = "train", **kwargs) -> ClipDataset:
    """A folder with ``manifest.csv`` (columns ``path,label,person``; more are ignored), e.g. the
    Weizmann actions. Splits are by person, never by clip (a person in both halves leaks identity
    and background): the sorted persons are cut into 3 contiguous folds; split k tests on fold k
    and trains on the others. The person is each video's group.

    Splits 4..6 are validation splits, for choosing settings without the test persons: split 3+k
    keeps only split k's training persons and tests on the last third of them (Weizmann: 2 of 6),
    so nothing tuned on it has seen split k's test persons."""
    root = os.fspath(root)
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no manifest (columns path,label,person)")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "person"} - set(reader.fieldnames or [])
        if missing:
            raise SplitError(f"{path}: needs the columns path, label, person (missing: {', '.join(sorted(missing))})")
        rows = [(safe_relpath(r["path"], f"{path}:{i + 2}"), r["label"].strip(), r["person"].strip())
                for i, r in enumerate(reader) if r["path"].strip()]  # fmt: skip
    if subset not in ("train", "test", "all") or split not in range(1, 2 * FOLDS + 1):
        raise SplitError(
            f"{path}: splits 1..{FOLDS} (4..{2 * FOLDS}: their validation splits) and subsets train/test/all, "
            f"not split {split} {subset!r}"
        )
    persons = sorted({p for _, _, p in rows})
    if len(persons) < 2 * FOLDS:
        raise SplitError(f"{path}: {len(persons)} person(s); {FOLDS} folds by person with validation need 6 or more")
    held = _fold(persons, split if split <= FOLDS else split - FOLDS)
    if split > FOLDS:  # validation: split k's training persons only, the last third of them held out
        persons = [p for p in persons if p not in held]
        rows = [r for r in rows if r[2] in persons]
        per = -(-len(persons) // FOLDS)
        held = set(persons[-per:])
    classes = sorted({c for _, c, _ in rows})
    keep = [r for r in rows if subset == "all" or (r[2] in held) == (subset == "test")]
    items, repeated = dedupe([(rel, classes.index(c)) for rel, c, _ in keep], path)
    if repeated:
        log.warning("%s: %d repeated line(s) ignored: each video is used once", path, repeated)
    person = {rel.lower(): p for rel, _, p in rows}
    found, reasons = resolve_entries(root, items, path)
    records = [VideoRecord(rel, label, person[rel.lower()]) for rel, label in found]
    kwargs.setdefault("name", f"{os.path.basename(root.rstrip('/'))} fold{split} {subset}")
    ds = ClipDataset(root, records, classes, **kwargs)
    ds.skipped = reasons + ds.skipped
    return ds


def _fold(persons: list[str], k: int) -> set[str]:
    """Fold k (1-based) of the sorted persons cut into FOLDS contiguous parts."""
    per = -(-len(persons) // FOLDS)
    return set(persons[(k - 1) * per : k * per])
