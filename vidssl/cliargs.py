"""The command line's plumbing: one-line parse errors, --config files, and the flag names users
bring from torchvision's reference scripts and timm (aliases of vidssl's own)."""

from __future__ import annotations

import os


class ArgError(Exception):
    """A command line that does not parse: the one line to print."""


def _one_line(event) -> str | None:
    """One line for a tyro parse error (None: let tyro print its own)."""
    from tyro import _errors as te

    arg = getattr(event, "argument", None)
    name = "/".join(arg.lowered.name_or_flags) if arg is not None and arg.lowered.name_or_flags else "value"
    if isinstance(event, te.InvalidChoice):
        return f"argument {name}: invalid choice: {event.value!r} (choose from {', '.join(map(repr, event.choices))})"
    if isinstance(event, te.UnrecognizedArgs):
        return f"unrecognized arguments: {' '.join(event.tokens)}"
    if isinstance(event, te.MissingArgs):
        names = [m.arg.lowered.metavar or "/".join(m.arg.lowered.name_or_flags) for m in event.missing_arguments]
        return f"the following arguments are required: {', '.join(names)}"
    if isinstance(event, te.BadValue):
        given = f" {event.offending_value!r}" if event.offending_value else ""
        return f"argument {name}: {event.reason.replace('_', ' ')}{given}"
    if isinstance(event, te.InstantiationFailure):
        text = event.message.strip().splitlines()[0]
        if text.startswith("no type matching"):  # e.g. --iters x for an int-or-unset option
            metavar = arg.lowered.metavar if arg is not None else ""
            given = text.split(" from ", 1)[-1].rstrip(".")
            return f"argument {name}: {given} is not {metavar.lower().replace('{none}|', 'none or ')}"
        return f"argument {name}: {text}"
    return None


def _take(args: list[str], flag: str, with_value: bool) -> tuple[list[str], str | bool | None]:
    """``args`` without ``flag`` (and its value), and that value (True for a bare flag, None if absent)."""
    rest, value, it = [], None, iter(range(len(args)))
    for i in it:
        a = args[i]
        if a == flag:
            if not with_value:
                value = True
                continue
            if i + 1 >= len(args):
                raise ArgError(f"argument {flag}: expected a file")
            value = args[i + 1]
            next(it)
        elif with_value and a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return rest, value


def read_config_file(path: str) -> dict:
    """Options from a YAML (or JSON) file; a run's config.json is read for the config it stores."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable config file ({str(e).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "kind" in data:
        data = data["config"]  # the config.json a pretraining or fine-tuning run wrote
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds `option: value` lines, not a {type(data).__name__}")
    return data


def _registry():
    """tyro's constructors, plus: an unset option is written `none` (or `None`) on the command line."""
    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec

    registry = ConstructorRegistry()

    @registry.primitive_rule
    def none_rule(type_info):
        if type_info.type is not type(None):
            return None
        return PrimitiveConstructorSpec(
            nargs=1,
            metavar="{none}",
            choices=("none", "None"),
            instance_from_str=lambda args: None,
            is_instance=lambda x: x is None,
            str_from_instance=lambda instance: ["none"],
        )

    return registry


# torchvision's reference scripts / timm -> vidssl, for the commands that have the vidssl option.
ALIASES = {"--output-dir": "--out", "-b": "--batch-size", "-j": "--workers"}


def _run_folder(path: str) -> str | None:
    """The run folder of ``path`` (a run folder, or a checkpoint or file inside one), if it is one."""
    here = os.path.abspath(path[: -len(".json")] if path.endswith(".json") else path)
    if not os.path.isdir(here) and not os.path.isfile(here + ".json") and not os.path.isfile(here):
        return None
    for _ in range(4):  # OUT, OUT/checkpoints/last, OUT/seed0/checkpoints/last
        if os.path.isfile(os.path.join(here, "config.yaml")):
            return here
        here = os.path.dirname(here)
    return None


def translate_aliases(name: str, args: list[str], fields: set[str]) -> list[str]:
    """``args`` with the aliases replaced by vidssl's flags (only where the command has the option),
    and ``--resume PATH`` (torchvision's form: a checkpoint or run folder) as ``--resume --out RUN``."""
    out: list[str] = []
    it = iter(range(len(args)))
    for i in it:
        a = args[i]
        flag, eq, value = a.partition("=")
        if flag in ALIASES and ALIASES[flag][2:].replace("-", "_") in fields:
            out.append(ALIASES[flag] + eq + value)
        elif a == "--resume" and "resume" in fields and i + 1 < len(args) and not args[i + 1].startswith("-"):
            run = _run_folder(args[i + 1])
            if run is None:  # e.g. the dataset right after a bare --resume
                out.append(a)
                continue
            given = [args[j + 1] for j in range(len(args) - 1) if args[j] in ("--out", "--output-dir")]
            if given and os.path.abspath(given[-1]) != run:
                raise ArgError(f"--resume {args[i + 1]} is in run {run}, not --out {given[-1]}")
            out += ["--resume"] + ([] if given else ["--out", run])
            next(it)
        else:
            out.append(a)
    return out
