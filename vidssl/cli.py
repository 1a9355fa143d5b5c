"""The `vidssl` command: one subcommand per job, each configured by one dataclass."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass

from .checkpoint import CheckpointError
from .config import add_config_args, check_ranges, config_from_args
from .data.splits import SplitError
from .data.synth import SynthConfig
from .data.video import VideoError
from .demo import DemoConfig
from .finetune import FinetuneConfig
from .fuse import FuseConfig
from .info import InfoConfig
from .preprocess import PreprocessConfig
from .pretrain import EvalPretextConfig, PretrainConfig
from .probe import ProbeConfig
from .retrieval import RetrieveConfig
from .stats import STATS_COLUMNS, StatsConfig, format_table
from .visualize import VisualizeConfig

# Errors that are the user's to fix: one line, exit code 2, no traceback (VIDSSL_DEBUG=1 shows it).
USER_ERRORS = (
    VideoError,
    SplitError,
    CheckpointError,
    FileNotFoundError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    FloatingPointError,
)


@dataclass
class SynthCommand(SynthConfig):
    out: str = "data/synth"  # folder to write UCF-101/ and ucfTrainTestlist/ into
    workers: int = 0  # parallel processes (0: one per core)


def run_synth(cfg: SynthCommand) -> None:
    from .data.synth import generate

    start = time.time()
    conf = SynthConfig(**{k: v for k, v in asdict(cfg).items() if k in SynthConfig.__dataclass_fields__})
    generate(cfg.out, conf, workers=cfg.workers or None)
    n = cfg.classes * cfg.groups * cfg.clips
    print(
        f"wrote {n} videos ({cfg.classes} classes x {cfg.groups} groups x {cfg.clips} clips, "
        f"{cfg.frames} frames of {cfg.height}x{cfg.width}) to {cfg.out} in {time.time() - start:.1f}s"
    )


def run_preprocess(cfg: PreprocessConfig) -> None:
    from .preprocess import preprocess

    r = preprocess(cfg)
    print(
        f"cache {r['cache']}: {r['videos']} videos ({r['written_now']} written now, {r['already_cached']} "
        f"already there, {r['skipped']} skipped as unreadable, listed in skipped.json); "
        f"{r['cached_bytes'] / 1e6:.1f} MB, {r['bytes_per_video'] / 1e3:.1f} kB per video; {r['seconds']}s"
    )


def run_stats(cfg: StatsConfig) -> None:
    from .stats import dataset_stats

    rows = dataset_stats(cfg)
    print(f"{cfg.dataset} ({rows[0]['kind']}, split {cfg.split})")
    print(format_table(rows, STATS_COLUMNS))


def run_pretrain(cfg: PretrainConfig) -> None:
    from .pretrain import pretrain

    path = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {path}")


def run_finetune(cfg: FinetuneConfig) -> None:
    from .finetune import finetune

    res = finetune(cfg)
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


def run_retrieve(cfg: RetrieveConfig) -> None:
    from .retrieval import retrieve

    res = retrieve(cfg)
    print(
        f"{res['query_videos']} query videos, {res['gallery_videos']} gallery videos, "
        f"{res['feature_dim']}-d features ({cfg.feature}) from {res['source']['init']}"
    )
    if "clip" in res:
        rows = [
            {"level": lvl, **{f"top-{k}": f"{100 * v:.1f}" for k, v in res[lvl].items()}} for lvl in ("clip", "video")
        ]
        print(format_table(rows, list(rows[0])))
    print(f"nearest neighbours: {os.path.join(cfg.out, 'neighbours.csv')}")


def run_eval_pretext(cfg: EvalPretextConfig) -> None:
    from .pretrain import eval_pretext

    rows = eval_pretext(cfg)
    for r in rows:
        r["checkpoint"] = os.path.basename(r["checkpoint"])
    print(format_table(rows, list(rows[0])))


def run_fuse(cfg: FuseConfig) -> None:
    from .fuse import fuse

    r = fuse(cfg)
    print(
        format_table(
            [
                {"model": n, "video top-1": f"{100 * r[k]:.1f}"}
                for n, k in (("A " + cfg.a, "a"), ("B " + cfg.b, "b"), ("fused (geometric mean)", "fused"))
            ],
            ["model", "video top-1"],
        )
    )


def run_probe(cfg: ProbeConfig) -> None:
    from .probe import probe

    r = probe(cfg)
    print(
        f"linear probe top-1 {100 * r['linear_top1']:.1f}, {cfg.k}-NN top-1 {100 * r['knn_top1']:.1f} "
        f"({r['train_videos']} train / {r['test_videos']} test videos, {r['feature_dim']}-d)"
    )


def run_visualize(cfg: VisualizeConfig) -> None:
    from .visualize import visualize

    print(f"wrote {visualize(cfg)}")


def run_info(cfg: InfoConfig) -> None:
    from .info import info

    rows = info(cfg)
    for r in rows:
        r["params"] = f"{r['params']:,}"
    print(f"clip 3x{cfg.frames}x{cfg.size[0]}x{cfg.size[1]}, width {cfg.width}; FLOPs = 2 x multiply-adds, forward")
    print(format_table(rows, ["backbone", "params", "gflops", "feature", "conv5", "retrieval"]))


def run_demo(cfg: DemoConfig) -> None:
    from .demo import demo

    demo(cfg)


# name -> (config class, runner, positional fields, one-line help)
COMMANDS = {
    "synth": (SynthCommand, run_synth, ("out",), "write the embedded synthetic dataset (UCF101 layout)"),
    "preprocess": (PreprocessConfig, run_preprocess, ("dataset",), "decode a dataset once into a frame cache"),
    "stats": (StatsConfig, run_stats, ("dataset",), "print what a dataset holds, split by split"),
    "pretrain": (PretrainConfig, run_pretrain, ("dataset",), "self-supervised pretraining (rotation, clip order)"),
    "finetune": (FinetuneConfig, run_finetune, ("dataset",), "fine-tune for action recognition and test"),
    "retrieve": (RetrieveConfig, run_retrieve, ("dataset",), "nearest-neighbour video retrieval (top-k)"),
    "eval-pretext": (
        EvalPretextConfig,
        run_eval_pretext,
        ("checkpoints", "dataset"),
        "pretext accuracy of checkpoints",
    ),
    "fuse": (FuseConfig, run_fuse, ("a", "b"), "late fusion of two fine-tuned models (RGB + DIF)"),
    "probe": (ProbeConfig, run_probe, ("dataset",), "linear and k-NN classifiers on frozen features"),
    "visualize": (
        VisualizeConfig,
        run_visualize,
        ("what", "source"),
        "attention maps, kernels, retrieval samples, curves",
    ),
    "info": (InfoConfig, run_info, (), "parameters, FLOPs and feature shapes of every backbone"),
    "demo": (DemoConfig, run_demo, (), "the main job on the embedded synthetic dataset"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse that answers a bad argument with one line (what is wrong, the valid choices, where
    to look) and exit code 2, instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vidssl",
        description="Self-supervised spatiotemporal feature learning from unlabelled video (3DRotNet, VCOP).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (cls, _, positional, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_args(p, cls, positional)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="vidssl: warning: %(message)s", level=logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    cls, run, _, _ = COMMANDS[args.command]
    try:
        cfg = config_from_args(cls, args)
        check_ranges(cfg)
        run(cfg)
    except USER_ERRORS as e:
        if os.environ.get("VIDSSL_DEBUG"):
            raise
        print(f"vidssl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidssl: interrupted", file=sys.stderr)
        return 130
    return 0


def main_exit() -> None:
    """Console-script entry point."""
    sys.exit(main())
