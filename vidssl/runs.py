"""Run folders: one run per ``--out``, never overwritten, resumed only with the settings it ran with.

A run folder holds what one command made (checkpoints, logs, results) and the resolved config it
ran with (``config.yaml``). Before a command writes anything, ``claim`` decides:

- the folder is missing or empty: a new run;
- ``--resume``: it must hold the run's last checkpoint, and the settings must be the stored ones,
  except those in ``SAFE_ON_RESUME`` (they change how fast, how long or how loudly a run goes,
  not what it learns): a contradicting flag is refused naming both values;
- an evaluation command run again with exactly the stored config: recomputed in place (its
  results are a function of the config, and its caches are keyed on content);
- anything else is refused with the one line that says what to do, unless ``--overwrite``, which
  moves the old run aside to ``OUT.old-N`` (nothing is deleted).
"""

from __future__ import annotations

import logging
import os

from .fields import gained_since, plain_defaults, to_plain

log = logging.getLogger("vidssl")

# Fields a resumed run may change: speed, logging, length, where it runs. Anything else would make
# the continued run a different one than its checkpoints belong to.
SAFE_ON_RESUME = frozenset(
    {"workers", "log_every", "ckpt_every", "keep_every", "progress", "tensorboard", "iters", "epochs",
     "device", "bf16", "compile", "grad_checkpointing", "channels_last", "resume", "overwrite", "out"}
)  # fmt: skip


PATHS = frozenset({"dataset", "cache", "init"})


# An evaluation run again into its folder: only what cannot change a result may differ.
SAFE_ON_RERUN = frozenset({"progress", "workers", "overwrite"})


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message names it and what to do."""


def _entries(out: str) -> list[str]:
    try:
        return sorted(os.listdir(out))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise RunError(f"{out}: --out is a file, not a folder; choose a folder") from None


def moved_aside(out: str) -> str:
    """The first free ``OUT.old-N``."""
    n = 1
    while os.path.exists(f"{out.rstrip(os.sep)}.old-{n}"):
        n += 1
    return f"{out.rstrip(os.sep)}.old-{n}"


def stored_config(out: str) -> dict | None:
    """The resolved config a run stored (OUT/config.yaml), as plain data; None when there is none."""
    import yaml

    path = os.path.join(out, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunError(
            f"{path}: unreadable run config ({str(e).splitlines()[0]}); --overwrite moves the run aside"
        ) from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a run config; --overwrite moves the run aside")
    return data


def _show(v) -> str:
    return "unset" if v is None else repr(v) if isinstance(v, str) else str(v)


def contradictions(stored: dict, now: dict, safe=SAFE_ON_RESUME, defaults: dict | None = None) -> list[str]:
    """'--lr 0.05 (the run has 0.01)' for every setting that differs and is not safe to change.
    ``defaults``: the config class's (plain_defaults); an option the stored config lacks is no
    contradiction while ``now`` has it at its default (fields.gained_since)."""
    diffs = []
    for k in sorted(set(stored) | set(now)):
        a, b = stored.get(k), now.get(k)
        a, b = (list(a) if isinstance(a, tuple) else a), (list(b) if isinstance(b, tuple) else b)
        if k in PATHS and isinstance(a, str) and isinstance(b, str):  # data/ and data name one folder
            a, b = os.path.normpath(a), os.path.normpath(b)
        if gained_since(k, stored, now, defaults or {}):
            continue
        if k not in safe and a != b:
            diffs.append(f"--{k.replace('_', '-')} {_show(b)} (the run has {_show(a)})")
    return diffs


def check_resume(out: str, now: dict, marker: str, safe=SAFE_ON_RESUME, defaults: dict | None = None) -> None:
    """Refuse a resume with nothing to resume, or with settings that contradict the stored ones."""
    if not os.path.exists(marker):
        raise RunError(
            f"{out}: nothing to resume (no {os.path.relpath(marker, out)}); drop --resume to start a new run there"
        )
    stored = stored_config(out)
    if stored is None:
        return  # a run from before stored configs: its checkpoint's model check still applies
    diffs = contradictions(stored, now, safe, defaults)
    if diffs:
        raise RunError(
            f"{out}: --resume continues the run with its stored settings ({os.path.join(out, 'config.yaml')}), "
            f"but {'; '.join(diffs)}; drop the flag(s), or start a new run with another --out"
        )


def claim(out: str, cfg, *, command: str, resume: bool = False, overwrite: bool = False,
          rerun_ok: bool = False, marker: str | None = None, main: bool = True) -> str:  # fmt: skip
    """Decide what ``command`` may do with folder ``out`` (see the module doc) and prepare it;
    returns "new", "resume", "rerun" or "moved". ``cfg`` is the command's resolved config;
    ``marker`` the file a resumable run has (its last checkpoint). Under torchrun only rank 0
    (``main``) decides: another rank could see rank 0's first files and take them for an old run;
    when rank 0 refuses, torchrun stops the others."""
    if not main:
        return "other rank"
    now, defaults = to_plain(cfg), plain_defaults(type(cfg))
    if resume:
        check_resume(out, now, marker or os.path.join(out, "checkpoints", "last.json"), defaults=defaults)
        return "resume"
    entries = _entries(out)
    if not entries:
        _writable(out)
        return "new"
    stored = stored_config(out) if "config.yaml" in entries else None
    if rerun_ok and stored is not None and not contradictions(stored, now, SAFE_ON_RERUN, defaults):
        _writable(out)
        return "rerun"
    if overwrite:
        dest = moved_aside(out)
        os.rename(out, dest)
        log.warning("moved the previous contents of %s to %s (--overwrite)", out, dest)
        _writable(out)
        return "moved"
    if stored is None:
        what = f"files ({', '.join(entries[:3])}{', ...' * (len(entries) > 3)})"
    elif rerun_ok:
        what = "results of other settings (" + "; ".join(contradictions(stored, now, SAFE_ON_RERUN, defaults)[:3]) + ")"
    else:
        what = "a run"
    resume_hint = "--resume continues it, " if marker is not None or command in ("pretrain", "finetune") else ""
    raise RunError(
        f"{out} already holds {what}; {resume_hint}another --out starts a new one, "
        f"--overwrite moves the old one aside to {moved_aside(out)}"
    )


def _writable(out: str) -> None:
    """Create ``out`` and prove it can be written, so that a read-only or full place fails now, in
    one line, not after an hour of training."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".vidssl-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise RunError(f"{out}: cannot write the run there ({e.strerror or e}); choose another --out") from None
