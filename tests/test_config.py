"""The config system: every option's help, config files, --print-config round trips, fast --help,
and the layout rules (no command module imports another)."""

import ast
import dataclasses
import os
import re
import subprocess
import sys
import typing

import pytest
import yaml
from safetensors.torch import load_file

from vidssl import config
from vidssl.cli import COMMANDS, main

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "vidssl")


def help_entries(text: str, positional: set[str]) -> dict[str, str]:
    """{first token of an entry (a flag or one of the ``positional`` names): its whole help text}
    from a tyro --help page."""
    entries, current = {}, None
    for raw in text.splitlines():
        line = raw.strip().strip("│╭╮╰╯─").strip()
        if not line or line.startswith(("usage:", "positional arguments", "options")):
            continue
        first = line.split()[0].rstrip(",")
        if first.startswith("-") or first in positional:
            current = first
            entries[current] = line
        elif current is not None:
            entries[current] += " " + line
    return entries


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_of_every_subcommand_has_its_help_once(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    page = capsys.readouterr().out
    assert f"usage: vidssl {command}" in page and "--config FILE.yaml" in page
    cls = getattr(config, COMMANDS[command][0])
    hints = typing.get_type_hints(cls, include_extras=True)
    positional = {f.name.upper() for f in dataclasses.fields(cls) if "Positional" in str(hints[f.name])}
    entries = help_entries(page, positional)
    for f in dataclasses.fields(cls):
        key = f.name.upper() if f.name.upper() in positional else "--" + f.name.replace("_", "-")
        assert key in entries, f"{command}: {key} is not in --help"
        text = entries[key]
        words = re.sub(r"\(default: [^)]*\)|\(required\)", "", text.split(maxsplit=1)[1] if " " in text else "")
        words = re.sub(r"^(--\S+|\{[^}]*\}\S*|[A-Z_|{}]+)\s*", "", words.strip())  # the flag's metavar
        assert len(words.strip()) >= 3, f"{command} {key}: empty help ({text!r})"
        assert text.count("(default:") <= 1, f"{command} {key}: default shown twice ({text!r})"


def _imports(code: str) -> set[str]:
    """Modules a file imports with `from .X import` (its package-relative imports)."""
    out = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
    return out


COMMAND_MODULES = ("pretrain", "finetune", "retrieval", "probe", "eval_pretext", "visualize", "fuse", "preprocess",
                   "stats", "info")  # fmt: skip


def test_no_command_module_imports_another_and_no_module_is_huge():
    for name in COMMAND_MODULES:
        code = open(os.path.join(PACKAGE, name + ".py")).read()
        assert not (_imports(code) & set(COMMAND_MODULES)), f"{name}.py imports {_imports(code) & set(COMMAND_MODULES)}"
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                lines = open(os.path.join(folder, f)).read().count("\n")
                assert lines <= 420, f"{f}: {lines} lines (about 400 at most: split it by what it holds)"


def _python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return r.stdout + r.stderr


def test_help_imports_no_heavy_library():
    heavy = "print(sorted(m for m in ('torch', 'av', 'matplotlib') if m in sys.modules))"
    out = _python(f"import sys\nfrom vidssl.cli import main\nmain(['--help'])\n{heavy}")
    assert "commands:" in out and out.strip().endswith("[]"), out
    code = "import sys\nfrom vidssl.cli import main\n"
    code += "try:\n    main(['pretrain', '--help'])\nexcept SystemExit:\n    pass\n"
    out = _python(code + heavy)
    assert "--lr" in out and out.strip().endswith("[]"), out[-500:]


def test_version_and_unknown_command(capsys):
    from vidssl import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"vidssl {__version__}"
    assert main(["pretrian"]) == 2
    assert "unknown command 'pretrian'; did you mean 'pretrain'?" in capsys.readouterr().err


TINY_RUN = ["--backbone", "r3d_10", "--width", "0.25", "--frame-size", "40x40", "--crop", "32", "--clip-length", "8",
            "--batch-size", "4", "--iters", "3", "--lr", "0.01", "--val-videos", "2", "--workers", "0",
            "--no-progress", "--no-tensorboard", "--no-channels-last"]  # fmt: skip


def test_print_config_then_config_file_reproduces_the_run(tiny_synth, tmp_path, capsys):
    assert main(["pretrain", tiny_synth, *TINY_RUN, "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["iters"] == 3 and values["frame_size"] == [40, 40] and values["dataset"] == tiny_synth
    assert values["lr_decay_every"] == 24_000  # the paper's value for rotation, resolved
    (tmp_path / "a.yaml").write_text(printed)
    assert main(["pretrain", tiny_synth, *TINY_RUN, "--out", str(tmp_path / "flags")]) == 0
    assert main(["pretrain", "--config", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "file")]) == 0
    a = load_file(str(tmp_path / "flags" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "file" / "checkpoints" / "last.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    stored = yaml.safe_load(open(tmp_path / "file" / "config.yaml"))
    assert {**stored, "out": None} == {**values, "out": None}  # what the run stores is what was printed


def test_flags_override_the_config_file_and_bad_files_are_one_line(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("dataset: somewhere\nlr: 0.5\nframe_size: [64, 80]\n")
    assert main(["pretrain", "--config", str(tmp_path / "a.yaml"), "--lr", "0.01", "--print-config"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["lr"] == 0.01 and values["frame_size"] == [64, 80] and values["dataset"] == "somewhere"
    for text, words in [
        ("lr: 0.1\nlearning_rate: 3\n", "unknown option(s) learning_rate"),
        ("dataset: d\nlr: fast\n", "lr: 'fast' does not fit"),
        ("dataset: d\ntask: colour\n", "task: 'colour' does not fit"),
        ("- a\n- b\n", "holds `option: value` lines, not a list"),
        ("dataset: [unclosed\n", "not a readable config file"),
    ]:
        (tmp_path / "bad.yaml").write_text(text)
        assert main(["pretrain", "--config", str(tmp_path / "bad.yaml"), "--print-config"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err and "bad.yaml" in err, err
    assert main(["pretrain", "d", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["retrieve", "probe", "eval-pretext", "visualize"])
def test_evaluation_commands_take_a_device(command, tiny_synth, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU message")
    args = {
        "retrieve": ["retrieve", tiny_synth],
        "probe": ["probe", tiny_synth],
        "eval-pretext": ["eval-pretext", str(tmp_path / "ckpts"), tiny_synth],
        "visualize": ["visualize", "attention", str(tmp_path / "c.json"), "--video", "v.avi"],
    }[command]
    assert main([*args, "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "--device cuda, but torch sees no CUDA GPU" in capsys.readouterr().err
