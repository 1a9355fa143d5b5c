"""Official split files of UCF101 and HMDB51, parsed strictly with errors that name file and line.

UCF101 (``ucfTrainTestlist/``): ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based), ``trainlist0N.txt``
("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and ``testlist0N.txt`` (path only).
HMDB51 (``testTrainMulti_7030_splits/``): ``<class>_test_splitN.txt`` with "<video>.avi 1|2|0"
(1 train, 2 test, 0 unused). Labels are 0-based inside vidssl.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from collections import Counter

from .video import list_videos

log = logging.getLogger("vidssl")


class SplitError(ValueError):
    """A missing or malformed split file; the message names the file (and line) and what to do."""


Rejected = list[tuple[str, str]]  # (the line's entry, "file:line: what is wrong with it")


def _all_rejected(path: str, rejected: Rejected) -> SplitError:
    return SplitError(f"{path}: no usable line; the first: {rejected[0][1]}")


def _lines(path: str):
    if not os.path.isfile(path):
        raise SplitError(f"{path}: split file not found; pass the folder with the official split files")
    # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first line;
    # strip() below takes CRLF line ends too.
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if line:
                yield number, line


def safe_relpath(path: str, where: str) -> str:
    """A split entry as a clean relative path; refuses absolute paths and '..' (no escaping the root)."""
    rel = posixpath.normpath(path.replace("\\", "/"))
    if rel.startswith("/") or rel == ".." or rel.startswith("../") or re.match(r"^[A-Za-z]:", rel):
        raise SplitError(f"{where}: path {path!r} leaves the dataset folder; split entries must be relative")
    return rel


def read_ucf101_classes(splits_dir: str) -> list[str]:
    path = os.path.join(splits_dir, "classInd.txt")
    classes: dict[int, str] = {}
    for number, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{path}:{number}: expected '<index> <ClassName>', got {line!r}")
        classes[int(parts[0])] = parts[1]
    if sorted(classes) != list(range(1, len(classes) + 1)):
        raise SplitError(f"{path}: class indices must run 1..N without gaps")
    return [classes[i] for i in range(1, len(classes) + 1)]


def read_ucf101_split(splits_dir: str, split: int, subset: str) -> tuple[list[str], list[tuple[str, int]], Rejected]:
    """(classes, [(relative video path, 0-based label)], rejected lines) of one official UCF101 split.

    A malformed line, a class missing from classInd.txt, a label that disagrees with it or a path
    leaving the dataset folder rejects that line only (a long run should not die of one bad
    line); a file with no usable line at all is an error."""
    if split not in (1, 2, 3, 4) or subset not in ("train", "test"):
        raise SplitError(f"UCF101 has splits 1, 2, 3 and subsets train/test, not split {split} {subset!r}")
    if split == 4 and not os.path.isfile(os.path.join(splits_dir, f"{subset}list04.txt")):
        raise SplitError(
            f"{splits_dir}: no {subset}list04.txt; split 4 (a validation split inside split 1's training"
            " groups) exists only in the embedded dataset (vidssl synth): use split 1, 2 or 3"
        )
    classes = read_ucf101_classes(splits_dir)
    # Folder and list spell one class "HandstandPushups", file names "HandStandPushups": match loosely.
    by_lower = {c.lower(): i for i, c in enumerate(classes)}
    path = os.path.join(splits_dir, f"{subset}list0{split}.txt")
    items, rejected = [], []
    for number, line in _lines(path):
        try:
            items.append(_ucf101_line(line, f"{path}:{number}", subset, by_lower, classes))
        except SplitError as e:
            rejected.append((line, str(e)))
    if rejected and not items:
        raise _all_rejected(path, rejected)
    return classes, items, rejected


def _ucf101_line(line: str, where: str, subset: str, by_lower: dict, classes: list[str]) -> tuple[str, int]:
    parts = line.split()
    if subset == "train" and (len(parts) != 2 or not parts[1].isdigit()):
        raise SplitError(f"{where}: expected '<Class>/<video>.avi <label>', got {line!r}")
    if subset == "test" and len(parts) != 1:
        raise SplitError(f"{where}: expected '<Class>/<video>.avi', got {line!r}")
    rel = safe_relpath(parts[0], where)
    folder = rel.split("/")[0]
    if "/" not in rel or folder.lower() not in by_lower:
        raise SplitError(f"{where}: class folder {folder!r} is not in classInd.txt")
    label = by_lower[folder.lower()]
    if subset == "train" and int(parts[1]) - 1 != label:
        raise SplitError(f"{where}: label {parts[1]} disagrees with classInd.txt ({classes[label]} is {label + 1})")
    return rel, label


HMDB_SUBSETS = {"train": "1", "test": "2", "unused": "0"}


def read_hmdb51_split(splits_dir: str, split: int, subset: str) -> tuple[list[str], list[tuple[str, int]], Rejected]:
    """(classes, [(relative video path, 0-based label)], rejected lines) of one official HMDB51
    split; bad lines are rejected one by one, as for UCF101."""
    if split not in (1, 2, 3) or subset not in HMDB_SUBSETS:
        raise SplitError(f"HMDB51 has splits 1, 2, 3 and subsets train/test/unused, not split {split} {subset!r}")
    if not os.path.isdir(splits_dir):
        raise SplitError(f"{splits_dir}: split folder not found; pass the testTrainMulti_7030_splits folder")
    suffix = f"_test_split{split}.txt"
    files = sorted(f for f in os.listdir(splits_dir) if f.endswith(suffix) and not f.startswith("."))  # ._x: macOS
    if not files:
        raise SplitError(f"{splits_dir}: no '*{suffix}' files; is this the testTrainMulti_7030_splits folder?")
    classes = [f[: -len(suffix)] for f in files]
    items, rejected = [], []
    for label, (cls, fname) in enumerate(zip(classes, files)):
        path = os.path.join(splits_dir, fname)
        for number, line in _lines(path):
            parts, where = line.split(), f"{path}:{number}"
            try:
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise SplitError(f"{where}: expected '<video>.avi 0|1|2', got {line!r}")
                if parts[1] == HMDB_SUBSETS[subset]:
                    items.append((safe_relpath(f"{cls}/{parts[0]}", where), label))
            except SplitError as e:
                rejected.append((line, str(e)))
    if rejected and not items:
        raise _all_rejected(splits_dir, rejected)
    return classes, items, rejected


def ucf101_group(rel: str) -> str:
    """'gXX' of a UCF101-style name (v_<Class>_gXX_cYY.avi): clips of a group share actor and scene."""
    m = re.search(r"_g(\d+)_c\d+", os.path.basename(rel))
    return f"g{m.group(1)}" if m else ""


def hmdb51_group(rel: str) -> str:
    """The source film of an HMDB51 clip: the name before '_<class>_'."""
    cls, name = rel.split("/")[0], os.path.basename(rel)
    i = name.rfind(f"_{cls}_")
    return name[:i] if i > 0 else ""


def dedupe(items: list[tuple[str, int]], where: str) -> tuple[list[tuple[str, int]], int]:
    """Items with each video once (the first line wins); the count of repeated lines. A video
    listed twice would count twice in every accuracy (and be its own neighbour in retrieval)."""
    seen, out = set(), []
    for rel, label in items:
        key = rel.lower()
        if key not in seen:
            seen.add(key)
            out.append((rel, label))
    return out, len(items) - len(out)


def overlap(splits_dir: str, split: int, kind: str) -> list[str]:
    """Videos named by both the training and the test list of a split (UCF101: trainlist0N and
    testlist0N; HMDB51: marked both 1 and 2)."""
    read = read_ucf101_split if kind == "ucf101" else read_hmdb51_split
    try:
        _, train, _ = read(splits_dir, split, "train")
        _, test, _ = read(splits_dir, split, "test")
    except SplitError:  # a list without usable lines: the subset being loaded says so itself
        return []
    return sorted({r.lower() for r, _ in train} & {r.lower() for r, _ in test})


def refuse_overlap(both: list[str], where: str) -> None:
    if both:
        raise SplitError(
            f"{where}: {len(both)} video(s) are in both the training and the test list (e.g. {both[0]}); "
            "a test set must not hold training videos (every accuracy would read high): fix the lists"
        )


def resolve_entries(root: str, items, where: str):
    """Resolve split entries against the folder (case-insensitively, for UCF101's HandStandPushups);
    entries whose file is missing are returned separately, as (entry, reason), so the dataset can
    count them. One warning per missing video, or one per class whose whole folder is missing."""
    found, missing = [], []
    lower = None
    for rel, label in items:
        if os.path.isfile(os.path.join(root, rel)):
            found.append((rel, label))
            continue
        if lower is None:
            lower = {v.lower(): v for v in list_videos(root)}
        match = lower.get(rel.lower())
        (found if match else missing).append((match or rel, label))
    folders = [rel.split("/")[0] for rel, _ in missing]
    absent = Counter(f for f in folders if not os.path.isdir(os.path.join(root, f)))
    for folder, n in absent.items():
        names = [os.path.basename(rel) for rel, _ in missing if rel.split("/")[0] == folder]
        shown = ", ".join(names[:3]) + (", ..." if n > 3 else "")
        log.warning(
            "skipping %d video(s) of %s (%s): named by %s, but its class folder is missing", n, folder, shown, where
        )
    reasons = []
    for rel, _ in missing:
        folder = rel.split("/")[0]
        if folder in absent:
            reasons.append((rel, f"{os.path.join(root, rel)}: named by {where} but its class folder is missing"))
        else:
            log.warning("skipping %s: named by %s but not found", os.path.join(root, rel), where)
            reasons.append((rel, f"{os.path.join(root, rel)}: named by {where} but not found"))
    return found, reasons
