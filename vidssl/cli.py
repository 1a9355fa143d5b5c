"""The `vidssl` command: one subcommand per job, each configured by one typed dataclass (vidssl.config).

Parsing is tyro's: flags come from the dataclass fields (``--batch-size``, ``--no-progress``),
their help from the fields' comments, choices from their ``Literal`` types. A config file sets the
same fields (``--config run.yaml``; flags override it), ``--print-config`` prints the resolved config
in that format and exits, and every run stores it as ``config.yaml`` in its output folder. A bad
argument is one line naming it and exit code 2. Heavy libraries (torch, PyAV, matplotlib) are
imported only inside the command that runs, so ``vidssl --help`` is fast.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

from . import __version__
from .cliargs import ArgError, _one_line, _registry, _take, read_config_file, translate_aliases
from .errors import error_line, signals_end_the_command, user_errors

# name -> (config class in vidssl.config, runner, one-line help)
COMMANDS = {
    "synth": ("SynthCommand", "run_synth", "write the embedded synthetic dataset (UCF101 layout)"),
    "preprocess": ("PreprocessConfig", "run_preprocess", "decode a dataset once into a frame cache"),
    "stats": ("StatsConfig", "run_stats", "print what a dataset holds, split by split"),
    "pretrain": ("PretrainConfig", "run_pretrain", "self-supervised pretraining (rotation, clip order)"),
    "finetune": ("FinetuneConfig", "run_finetune", "fine-tune for action recognition and test"),
    "retrieve": ("RetrieveConfig", "run_retrieve", "nearest-neighbour video retrieval (top-k)"),
    "eval-pretext": ("EvalPretextConfig", "run_eval_pretext", "pretext accuracy of checkpoints"),
    "fuse": ("FuseConfig", "run_fuse", "late fusion of two fine-tuned models (RGB + DIF)"),
    "probe": ("ProbeConfig", "run_probe", "linear and k-NN classifiers on frozen features"),
    "visualize": ("VisualizeConfig", "run_visualize", "attention maps, kernels, retrieval samples, curves"),
    "embed": ("EmbedConfig", "run_embed", "one feature per video from a trained network, to a safetensors file"),
    "convert": ("ConvertConfig", "run_convert", "weights in and out: torchvision, a model folder, ONNX"),
    "info": ("InfoConfig", "run_info", "parameters, FLOPs and feature shapes of every backbone"),
    "demo": ("DemoConfig", "run_demo", "the main job on the embedded synthetic dataset"),
    "reproduce": ("ReproduceConfig", "run_reproduce", "one paper table: run its recipe, ours beside the paper's"),
}

CONFIG_HELP = (
    "Options can also come from a config file: --config FILE.yaml sets the same fields (flags given "
    "with it override the file); --print-config prints the resolved config in that format and exits. "
    "Every run stores its config as OUT/config.yaml. --preset NAME starts from a built-in config "
    "(finetune: 3drotnet, vcop; a --config file and flags override it). Flags of torchvision's reference "
    "scripts and timm are accepted as aliases: --output-dir (--out), -b (--batch-size), -j (--workers), "
    "--resume PATH (a run folder or a checkpoint in it: --resume --out RUN)."
)


def top_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: vidssl [-h] [--version] COMMAND ...",
        "",
        "Self-supervised spatiotemporal feature learning from unlabelled video (3DRotNet, VCOP).",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {text}" for name, (_, _, text) in COMMANDS.items()),
        "",
        "`vidssl COMMAND --help` lists a command's options. " + CONFIG_HELP,
    ]
    return "\n".join(lines)


def parse_command(name: str, args: list[str]):
    """(config, print_config) for ``vidssl NAME ARGS``; raises ArgError or a user error."""
    import tyro
    from tyro import _errors as te

    from . import config

    cls = getattr(config, COMMANDS[name][0])
    args = translate_aliases(name, args, set(cls.__dataclass_fields__))
    args, path = _take(args, "--config", True)
    args, show = _take(args, "--print-config", False)
    args, name_of_preset = _take(args, "--preset", True)
    values = config.preset(name, name_of_preset) if name_of_preset else {}  # a built-in config, then the file
    if path:
        values.update(read_config_file(path))
    where = path or f"preset {name_of_preset}"
    if (
        name in ("pretrain", "finetune") and "--resume" in args
    ):  # the run's own settings; flags are checked against them
        from .runs import stored_config

        _, out = _take(args, "--out", True)
        out = out or values.get("out") or cls.__dataclass_fields__["out"].default
        stored = stored_config(out)
        if stored:
            values, where = {**stored, **values}, os.path.join(out, "config.yaml")
    default = config.from_plain(cls, values, where, partial=True) if values else None

    def hook(event):
        line = _one_line(event)
        if line is not None:
            raise ArgError(line)

    description = f"{COMMANDS[name][2]}.\n\n{CONFIG_HELP}"
    with te.on_parse_error(hook):
        cfg = tyro.cli(cls, args=args, prog=f"vidssl {name}", default=default, description=description,
                       registry=_registry())  # fmt: skip
    return cfg, bool(show)


def resolved(name: str, cfg):
    """The config as the command will run it (pretraining fills the paper's values for its task)."""
    from . import config

    return config.resolve_pretrain(cfg) if name == "pretrain" else cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="vidssl: warning: %(message)s", level=logging.WARNING)
    if not argv or argv[0] in ("-h", "--help"):
        print(top_help(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"vidssl {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, 1)
        hint = f"; did you mean {near[0]!r}?" if near else f" (choose from {', '.join(COMMANDS)})"
        print(f"vidssl: error: unknown command {name!r}{hint}", file=sys.stderr)
        return 2
    with signals_end_the_command(name):
        try:
            from .config import check_ranges, dump_config

            cfg, show = parse_command(name, argv[1:])
            check_ranges(cfg)
            if show:
                print(dump_config(resolved(name, cfg), name), end="")
                return 0
            globals()[COMMANDS[name][1]](cfg)
        except ArgError as e:
            print(f"vidssl {name}: error: {e} (`vidssl {name} --help` lists the options)", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # raised outside the signal handler (Python callers, other threads)
            if os.environ.get("VIDSSL_DEBUG"):
                raise
            resume = " (--resume continues from its last checkpoint)" if name in ("pretrain", "finetune") else ""
            print(f"vidssl {name}: interrupted{resume}", file=sys.stderr)
            return 130
        except Exception as e:
            if os.environ.get("VIDSSL_DEBUG") or not isinstance(e, user_errors()):  # imports torch: only on errors
                raise
            print(f"vidssl {name}: error: {error_line(e)}", file=sys.stderr)
            return 2
    return 0


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())


# ---------------------------------------------------------------------------------------------
# The commands: run one config, print its result. Only rank 0 prints under torchrun.


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_synth(cfg) -> None:
    import time
    from dataclasses import fields

    from .config import SynthConfig
    from .data.synth import generate

    start = time.time()
    conf = SynthConfig(**{f.name: getattr(cfg, f.name) for f in fields(SynthConfig)})
    generate(cfg.out, conf, workers=cfg.workers or None)
    n = cfg.classes * cfg.groups * cfg.clips
    print(
        f"wrote {n} videos ({cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips, "
        f"{cfg.frames} frames of {cfg.height}x{cfg.width}) to {cfg.out} in {time.time() - start:.1f}s"
    )


def run_preprocess(cfg) -> None:
    from .preprocess import preprocess

    r = preprocess(cfg)
    shard = f" (shard {r['shard']})" if "shard" in r else ""
    print(
        f"cache {r['cache']}{shard}: {r['videos']} videos ({r['written_now']} written now, {r['already_cached']} "
        f"already there, {r['skipped']} skipped as unreadable, listed in skipped.json); "
        f"{r['cached_bytes'] / 1e6:.1f} MB, {r['bytes_per_video'] / 1e3:.1f} kB per video; {r['seconds']}s"
    )


def run_stats(cfg) -> None:
    from .report import format_table
    from .stats import STATS_COLUMNS, dataset_stats

    rows = dataset_stats(cfg)
    print(f"{cfg.dataset} ({rows[0]['kind']}, split {cfg.split})")
    print(format_table(rows, STATS_COLUMNS + (["stale_cache", "damaged_cache"] if cfg.cache else [])))
    if cfg.cache and any(r["stale_cache"] or r["damaged_cache"] for r in rows):
        print(f"`vidssl preprocess {cfg.dataset} {cfg.cache}` (same settings) makes stale and damaged entries again")


def run_pretrain(cfg) -> None:
    from .pretrain import pretrain

    path = pretrain(cfg)
    if _main_rank():
        print(f"best checkpoint: {path}")


def run_finetune(cfg) -> None:
    from .finetune import finetune
    from .report import format_table

    res = finetune(cfg)
    if not _main_rank():
        return
    rows = [
        {
            "seed": r["seed"],
            "train videos": r["train_videos"],
            "test videos": r["videos"],
            "video top-1": f"{100 * r['video_top1']:.1f}",
            "clip top-1": f"{100 * r['clip_top1']:.1f}",
        }
        for r in res["runs"]
    ]
    print(format_table(rows, list(rows[0])))
    s = res["summary"]
    print(
        f"video top-1 {100 * s['video_top1']['mean']:.1f} +- {100 * s['video_top1']['std']:.1f} "
        f"(clip {100 * s['clip_top1']['mean']:.1f} +- {100 * s['clip_top1']['std']:.1f}) over "
        f"{len(res['runs'])} seed(s); {os.path.join(cfg.out, 'results.json')}"
    )


def run_retrieve(cfg) -> None:
    from .report import format_table
    from .retrieval import retrieve

    res = retrieve(cfg)
    if not _main_rank():
        return
    print(
        f"{res['query_videos']} query videos, {res['gallery_videos']} gallery videos, "
        f"{res['feature_dim']}-d features ({cfg.feature}) from {res['source']['init']}"
    )
    if "clip" in res:
        rows = [
            {"level": lvl, **{f"top-{k}": f"{100 * v:.1f}" for k, v in res[lvl].items()}} for lvl in ("clip", "video")
        ]
        print(format_table(rows, list(rows[0])))
        for lvl in ("video", "clip"):
            print(f"{lvl} level: {res['levels'][lvl]}")
    print(f"nearest neighbours: {os.path.join(cfg.out, 'neighbours.csv')}")


def run_eval_pretext(cfg) -> None:
    from .eval_pretext import eval_pretext
    from .report import format_table

    rows = eval_pretext(cfg)
    if not _main_rank():
        return
    for r in rows:
        r["checkpoint"] = os.path.basename(r["checkpoint"])
    print(format_table(rows, list(rows[0])))


def run_fuse(cfg) -> None:
    from .fuse import fuse
    from .report import format_table

    r = fuse(cfg)
    rows = [
        {"model": n, "video top-1": f"{100 * r[k]:.1f}"}
        for n, k in (("A " + cfg.a, "a"), ("B " + cfg.b, "b"), ("fused (geometric mean)", "fused"))
    ]
    print(format_table(rows, ["model", "video top-1"]))


def run_probe(cfg) -> None:
    from .probe import probe

    r = probe(cfg)
    if _main_rank():
        print(
            f"linear probe top-1 {100 * r['linear_top1']:.1f}, {cfg.k}-NN top-1 {100 * r['knn_top1']:.1f} "
            f"({r['train_videos']} train / {r['test_videos']} test videos, {r['feature_dim']}-d)"
        )


def run_visualize(cfg) -> None:
    from .visualize import visualize

    print(f"wrote {visualize(cfg)}")


def run_info(cfg) -> None:
    from .info import info
    from .report import format_table

    rows = info(cfg)
    for r in rows:
        r["params"] = f"{r['params']:,}"
    print(f"clip 3x{cfg.frames}x{cfg.size[0]}x{cfg.size[1]}, width {cfg.width}; FLOPs = 2 x multiply-adds, forward")
    print(format_table(rows, ["backbone", "params", "gflops", "feature", "conv5", "retrieval"]))


def run_embed(cfg) -> None:
    from .embed import embed_videos

    r = embed_videos(cfg)
    if _main_rank():
        print(f"{r['out']}: features {tuple(r['shape'])} of {r['videos']} videos ({r['skipped']} skipped)")


def run_convert(cfg) -> None:
    from .convert import convert

    print(f"wrote {convert(cfg)}")


def run_demo(cfg) -> None:
    from .demo import demo

    demo(cfg)


def run_reproduce(cfg) -> None:
    from .reproduce import reproduce

    reproduce(cfg)
