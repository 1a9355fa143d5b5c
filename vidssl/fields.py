"""The types config fields are written with, and what is done with whole configs.

- Ranges are part of a field's type (``Positive[int]``, ``Probability``, ``Annotated[int, Range(1, 100)]``):
  ``check_ranges`` finds them there, so a range is stated beside the field it checks.
- ``Size`` is written HxW on the command line; ``TriState`` is a flag pair whose unset value means
  "decided at run time"; each choice list is one ``Literal``.
- A config goes to and from plain data (``to_plain``, ``from_plain``: config files, config.json)
  and YAML (``dump_config``: what ``--print-config`` prints and every run stores).
No torch here (vidssl --help stays fast).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from tyro.conf import DisallowNone, Positional, arg
from tyro.constructors import PrimitiveConstructorSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """A numeric range, stated in a field's type: ``Annotated[int, Range(1)]``."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself is excluded
    words: str = ""  # how the message says it ("must be positive"); derived when empty

    def contains(self, v: float) -> bool:
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return self.high is None or v <= self.high

    def describe(self) -> str:
        if self.words:
            return self.words
        if self.low == 0 and self.high is None:
            return "must be positive" if self.open_low else "must be 0 or more"
        if self.high is None:
            return f"must be at least {self.low:g}"
        return (
            f"must be in ({self.low:g}, {self.high:g}]" if self.open_low else f"must be {self.low:g} to {self.high:g}"
        )


Positive = Annotated[T, Range(0, open_low=True)]
NonNegative = Annotated[T, Range(0)]
Probability = Annotated[float, Range(0, 1, words="is a probability: 0 to 1")]
Fraction = Annotated[float, Range(0, 1, open_low=True)]
# A channel multiplier: above 4 the network outgrows any machine (25 meant 0.25 ran out of 24 GiB).
Width = Annotated[
    float, Range(0, 4, open_low=True, words="must be in (0, 4]: a channel multiplier (0.25 is a quarter)")
]


def _parse_size(args: list[str]) -> tuple[int, int] | None:
    """'128x171' -> (128, 171); '112' -> (112, 112); 'none' -> None."""
    text = args[0].strip().lower()
    if text == "none":
        return None
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not m or int(m.group(1)) <= 0 or (m.group(2) and int(m.group(2)) <= 0):
        raise ValueError(f"{args[0]!r} is not a size; write HxW (e.g. 128x171), N, or none")
    h = int(m.group(1))
    return (h, int(m.group(2) or h))


def show_size(size) -> str:
    return "none" if size is None else f"{size[0]}x{size[1]}"


# Frame sizes are written HxW on the command line (and as [H, W] in a config file).
Size = Annotated[
    tuple[int, int] | None,
    PrimitiveConstructorSpec(
        nargs=1,
        metavar="HxW",
        instance_from_str=_parse_size,
        is_instance=lambda x: x is None or (isinstance(x, tuple) and len(x) == 2),
        str_from_instance=lambda x: [show_size(x)],
    ),
]
# Positional arguments; in Python the command configs' own required fields stay positional too.
Dataset = Annotated[str, Positional, arg(metavar="DATASET")]
# bf16 and the like: unset means "decided at run time"; --x forces on, --no-x off.
TriState = DisallowNone[bool | None]

# The choice lists, each written once.
Kind = Literal["auto", "ucf101", "hmdb51", "kinetics", "manifest", "folder"]
Device = Literal["auto", "cpu", "cuda"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["step", "cosine"]
OnNan = Literal["stop", "skip"]
Modality = Literal["rgb", "dif"]
TaskName = Literal["rotation", "clip_order", "joint", "random_labels"]
RotationSet = Literal["0,90", "0,90,180", "90,180,270", "0,90,180,270", "8way", "360"]
Block = Literal["none", "conv2", "conv3", "conv4", "conv5", "all"]
FeatureKind = Literal["pooled", "vcop", "conv2", "conv3", "conv4"]  # backbones.clip_feature computes each
Subset = Literal["train", "test"]
# UCF101/HMDB51 have splits 1-3; a manifest dataset's 4-6 and the embedded dataset's 4 are validation
# splits inside a test split's training groups (persons), where settings are chosen.
Split = Annotated[
    int,
    Range(1, 6, words="must be 1, 2 or 3 (validation splits: 4 in the embedded dataset, 4-6 in a manifest dataset)"),
]


# ---------------------------------------------------------------------------------------------
# Checks and conversions


def _ranges(tp) -> list[Range]:
    """The Range markers in a type, looking inside Optional/Union."""
    found = [m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Range)]
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return found + _ranges(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [r for a in typing.get_args(tp) for r in _ranges(a)]
    return found


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ranges(cfg) -> None:
    """Raise ValueError naming the flag, its value and the valid range for any option out of range
    (None means "unset" and passes). Every float must be finite."""
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{flag(f.name)} must be a finite number, not {value}")
        for r in _ranges(hints[f.name]):
            if not r.contains(value):
                raise ValueError(f"{flag(f.name)} {r.describe()}, not {value}")


def to_plain(cfg) -> dict:
    """A config as plain data (tuples as lists), what config files and config.json hold."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def plain_defaults(cls) -> dict:
    """Each field's default as plain data (as to_plain writes it), for the fields that have one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def gained_since(key: str, stored: dict, now: dict, defaults: dict) -> bool:
    """``key`` is an option vidssl gained after ``stored`` (a run's or stage's record) was written,
    and ``now`` has it at its default: the record describes the same run. Any other value, or a
    key the record has, is a real difference."""
    return key not in stored and key in defaults and now.get(key) == defaults[key]


def describe_type(tp) -> str:
    """A field's type in words, for messages about config files."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return describe_type(args[0])
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is tuple:
        return "[H, W]"
    names = {float: "a number", int: "an integer", str: "text", bool: "true or false", type(None): "null (unset)"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def from_plain(cls, values: dict, where: str, partial: bool = False):
    """A config of class ``cls`` from plain data (a config file), every value type-checked; with
    ``partial``, required fields that are missing are left for the command line (tyro.MISSING).
    Raises ValueError naming ``where`` and the key for anything that does not fit."""
    import typeguard
    import tyro

    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {', '.join(unknown)}; `--print-config` shows the valid ones")
    out = {}
    for name, value in values.items():
        value = tuple(value) if isinstance(value, list) else value
        try:
            typeguard.check_type(value, hints[name])
        except typeguard.TypeCheckError:
            expected = describe_type(hints[name])
            raise ValueError(f"{where}: {name}: {value!r} does not fit; expected {expected}") from None
        out[name] = value
    for name, f in names.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in out:
            if not partial:
                raise ValueError(f"{where}: {name} is required")
            out[name] = tyro.MISSING
    return cls(**out)


def presets(command: str) -> list[str]:
    """Names of the built-in configs of a command (vidssl/presets/COMMAND-NAME.yaml)."""
    from importlib.resources import files

    folder = files("vidssl") / "presets"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(n[len(command) + 1 : -5] for n in names if n.startswith(command + "-") and n.endswith(".yaml"))


def preset(command: str, name: str) -> dict:
    """A built-in config of a command as option values, e.g. ``FinetuneConfig(d, **preset("finetune", "vcop"))``."""
    from importlib.resources import files

    import yaml

    if name not in presets(command):
        raise ValueError(f"{command} has no preset {name!r}; choose one of {', '.join(presets(command)) or 'none'}")
    values = yaml.safe_load((files("vidssl") / "presets" / f"{command}-{name}.yaml").read_text())
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def dump_config(cfg, command: str = "") -> str:
    """A config as YAML that ``--config`` reads back (the same run)."""
    import yaml

    from . import __version__

    head = f"# vidssl {command} config (vidssl {__version__}); run it again with: vidssl {command} --config FILE\n"
    return head + yaml.safe_dump(to_plain(cfg), sort_keys=False, default_flow_style=None)


def write_config(cfg, folder: str, command: str) -> str:
    """Store a run's resolved config as FOLDER/config.yaml; returns the path."""
    import os

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as f:
        f.write(dump_config(cfg, command))
    return path
