"""Typed command configs -> argparse, with one-line help taken from the field comments.

Each command has one dataclass whose fields are its options, with defaults and a ``# comment``
after each (nanoGPT's single place for settings, without its exec). Field types map to flags:
bool -> ``--x/--no-x``; ``Literal[...]`` -> choices; ``tuple[int, int]`` -> "HxW"; ``X | None`` accepts
"none". Fields listed in ``positional`` become positional arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing


def _comments(cls) -> dict[str, str]:
    """``name -> comment`` for ``name: type = default  # comment`` lines of a dataclass."""
    out = {}
    for klass in reversed(cls.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, re.M):
            out[m.group(1)] = m.group(2).strip()
    return out


def parse_size(text: str) -> tuple[int, int] | None:
    """'128x171' -> (128, 171); '112' -> (112, 112); 'none' -> None."""
    if text.lower() == "none":
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip().lower())
    if not m or int(m.group(1)) <= 0 or (m.group(2) and int(m.group(2)) <= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write HxW (e.g. 128x171), N, or none")
    h = int(m.group(1))
    return (h, int(m.group(2) or h))


def _optional(conv):
    def parse(text):
        return None if text.lower() == "none" else conv(text)

    parse.__name__ = conv.__name__
    return parse


def _kind(tp):
    """(converter, choices, is_bool) for a field type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        conv, choices, is_bool = _kind(inner)
        if is_bool:  # --x / --no-x, default None ("decided at run time")
            return None, None, True
        return (conv if conv is parse_size else _optional(conv)), choices, False
    if tp is bool:
        return None, None, True
    if origin is typing.Literal:
        return type(args[0]), list(args), False
    if origin is tuple:
        return parse_size, None, False
    return tp, None, False


def _show(value) -> str:
    if isinstance(value, tuple) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return str(value)


def add_config_args(parser: argparse.ArgumentParser, cls, positional: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    helps = _comments(cls)
    for f in dataclasses.fields(cls):
        conv, choices, is_bool = _kind(hints[f.name])
        has_default = f.default is not dataclasses.MISSING
        default = f.default if has_default else None
        text = helps.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if f.name in positional:
            extra = (
                {"nargs": "?", "default": default, "help": f"{text} (default: {_show(default)})"}
                if has_default
                else {"help": text}
            )
            parser.add_argument(f.name, type=conv, choices=choices, metavar=f.name.upper(), **extra)
            continue
        flag = "--" + f.name.replace("_", "-")
        if is_bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{text} (default: {'auto' if default is None else default})",  # None: decided at run time
            )
        else:
            parser.add_argument(
                flag,
                type=conv,
                choices=choices,
                default=default,
                required=not has_default,
                help=f"{text} (default: {_show(default)})" if has_default else text,
                metavar="{" + "|".join(map(str, choices)) + "}" if choices else f.name.upper(),
            )


def config_from_args(cls, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


# Ranges of numeric options, by field name, wherever a command has them (None values mean "the
# default" and pass). Checked before anything runs, so that `--clips -2` is one clear line, not a
# numpy error from deep inside.
POSITIVE = (
    "batch_size", "ckpt_every", "classes", "clip_length", "clips", "draws", "epochs", "fps", "frames",
    "groups", "height", "iters", "k", "log_every", "lr", "neighbours", "queries", "resample", "shots",
    "test_clips", "width",
)  # fmt: skip
NON_NEGATIVE = ("interval", "keep_every", "lr_decay_every", "order_weight", "rotation_weight", "val_videos",
                "warmup", "weight_decay", "workers", "momentum")  # fmt: skip


def check_ranges(cfg) -> None:
    """Raise ValueError naming the flag, its value and the valid range for any option out of range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in POSITIVE and not value > 0:
            raise ValueError(f"{flag} must be positive, not {value}")
        if f.name in NON_NEGATIVE and not value >= 0:
            raise ValueError(f"{flag} must be 0 or more, not {value}")
        if f.name == "flip" and not 0 <= value <= 1:
            raise ValueError(f"{flag} is a probability: 0 to 1, not {value}")
