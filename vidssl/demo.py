"""`vidssl demo`: the whole method on the embedded synthetic dataset, on a laptop CPU.

Stages: synthetic dataset -> frame cache -> rotation and clip-order pretraining -> fine-tuning from
scratch and from each, with 20 labels per class and with all labels -> retrieval with random weights
and each pretraining -> pictures -> a report (Markdown, HTML, JSON) and a table in the terminal.

CPU-sized settings, the same for every starting point so the comparison is fair: r3d_10 at width
0.25, 16-frame clips of 40x40 cut from 48x48 frames (raw cache), frame differences (DIF), fp32,
AdamW with a cosine schedule (short runs do not reach the papers' SGD schedules), the centred
clip-order head (the paper's head collapses on this data: docs/pretraining.md). Few-shot is 20
labelled videos per class: with 5, every starting point memorised its 50 videos and stayed near
chance (measured; docs/demo.md). Frame differences and 600 fine-tuning steps so that the scratch
baseline learns: on RGB it stayed at chance for ~700 steps, on DIF it passes 30% by step 480 and
50% by 600 (held-out training videos; docs/demo-baselines.md), so a gain measures the features.
"""

from __future__ import annotations

import json
import os
import time

from .config import DemoConfig, FinetuneConfig, PreprocessConfig, PretrainConfig, RetrieveConfig, SynthConfig
from .data.synth import generate
from .finetune import finetune
from .preprocess import preprocess
from .pretrain import pretrain
from .report import format_table, markdown_table, provenance
from .retrieval import retrieve
from .runs import claim


def _settings(quick: bool) -> dict:
    if quick:
        return {
            "synth": SynthConfig(classes=4, groups=6, clips=2, frames=72, height=48, width=64),
            "frame": 40,
            "crop": 32,
            "length": 8,
            "rot_iters": 20,
            "order_iters": 10,
            "ft_iters": (10, 10),
            "modality": "dif",
            "shots": 2,
            "clips": 2,
        }
    return {
        "synth": SynthConfig(),
        "frame": 48,
        "crop": 40,
        "length": 16,
        "rot_iters": 400,
        "order_iters": 600,
        "ft_iters": (600, 600),
        "modality": "dif",
        "shots": 20,
        "clips": 5,
    }


# Fine-tuning learning rate per (start, labels), chosen on the validation split 4 (never on the test
# groups), 3 seeds, docs/demo.md: 3e-3 is best for scratch (all labels 57.0 vs 43.9 at 1e-3) and
# for rotation few-shot (56.8 vs 50.6); clip order with all labels gains at 1e-3 (64.0 vs 59.1).
FT_LR = {("clip order", "all"): 1e-3}


class Stages:
    """One line per stage with elapsed time and an estimate of what is left."""

    def __init__(self, weights: list[tuple[str, float]]):
        self.weights, self.done, self.start, self.i = dict(weights), 0.0, time.time(), 0
        self.total = sum(self.weights.values())
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self.i += 1
        elapsed = time.time() - self.start
        eta = f", about {elapsed / self.done * (self.total - self.done) / 60:.0f} min left" if self.done else ""
        print(f"[{self.i}/{len(self.weights)}] {name} (elapsed {elapsed / 60:.1f} min{eta})", flush=True)
        t = time.time()
        result = fn(*args, **kwargs)
        self.done += self.weights[name]
        self.times[name] = time.time() - t
        return result


def demo(cfg: DemoConfig) -> dict:
    s = _settings(cfg.quick)
    out = cfg.out
    claim(out, cfg, command="demo", overwrite=cfg.overwrite)  # every stage below starts afresh
    data, cache = os.path.join(out, "synth"), os.path.join(out, "cache")
    frame = (s["frame"], s["frame"])
    common = dict(
        backbone="r3d_10",
        width=0.25,
        crop=s["crop"],
        clip_length=s["length"],
        seed=cfg.seed,
        progress=True,
        tensorboard=True,
        # Measured on a 2-core CPU without AMX: at this size fp32 runs faster than bf16 (171 vs 123
        # clips/s, model step alone) and loading from the raw cache in the main process is faster
        # than DataLoader workers competing with the model for the two cores (139 vs 70 clips/s).
        # channels_last_3d, 1.4x faster at 16x112x112, is slower at this size (141 vs 171 clips/s).
        workers=0,
        bf16=False,
        channels_last=False,
        optimizer="adamw",
        schedule="cosine",
    )
    stage_names = [
        "synthetic dataset",
        "frame cache",
        "rotation pretraining",
        "clip-order pretraining",
        "fine-tuning",
        "retrieval",
        "pictures",
        "report",
    ]
    # Stage weights for the time estimate: seconds each took in a default run (seed 1) on a 2-core AMD EPYC.
    st = Stages([(n, w) for n, w in zip(stage_names, (41, 34, 256, 135, 564, 49, 4, 1))])
    st.run("synthetic dataset", generate, data, s["synth"], workers=cfg.workers or None)
    st.run("frame cache", preprocess, PreprocessConfig(data, cache, format="raw", size=frame, workers=cfg.workers))
    val_videos = 40 if not cfg.quick else 4
    pre = dict(common, dataset=data, cache=cache, val_videos=val_videos, log_every=10, modality=s["modality"])
    rot = st.run(
        "rotation pretraining",
        pretrain,
        PretrainConfig(
            out=os.path.join(out, "pretrain-rotation"),
            task="rotation",
            batch_size=16,
            iters=s["rot_iters"],
            lr=2e-3,
            warmup=20,
            **pre,
        ),
    )
    order = st.run(
        "clip-order pretraining",
        pretrain,
        PretrainConfig(
            out=os.path.join(out, "pretrain-clip-order"),
            task="clip_order",
            order_head="centered",
            batch_size=8,
            iters=s["order_iters"],
            lr=1e-3,
            warmup=20,
            **pre,
        ),
    )
    inits = {"scratch": "scratch", "rotation": rot, "clip order": order}

    def run_finetunes():
        """Top-1 by (start, labels), and the number of test videos they were scored on."""
        res, n_test = {}, 0
        for labels, shots, iters in (("few-shot", s["shots"], s["ft_iters"][0]), ("all", None, s["ft_iters"][1])):
            for name, init in inits.items():
                ft = FinetuneConfig(
                    data,
                    init=init,
                    out=os.path.join(out, "finetune", f"{name}-{labels}".replace(" ", "_")),
                    cache=cache,
                    frame_size=None,
                    crop=s["crop"],
                    clip_length=s["length"],
                    shots=shots,
                    flip=0.0,  # MoveLeft/MoveRight and the two spins are mirror images: a flip swaps labels
                    seeds=str(cfg.seed),
                    batch_size=16,
                    iters=iters,
                    optimizer="adamw",
                    lr=FT_LR.get((name, labels), 3e-3),
                    schedule="cosine",
                    warmup=10,
                    test_clips=s["clips"],
                    workers=0,
                    bf16=False,
                    channels_last=False,
                    modality=s["modality"] if init == "scratch" else "auto",
                    backbone="r3d_10" if init == "scratch" else None,
                    width=0.25 if init == "scratch" else None,
                    tensorboard=False,
                )
                r = finetune(ft)
                res[(name, labels)] = r["summary"]["video_top1"]["mean"]
                n_test = r["runs"][0]["videos"]
        return res, n_test

    top1, n_test = st.run("fine-tuning", run_finetunes)

    def run_retrievals():
        res = {}
        for name, init in (("random", "random"), ("rotation", rot), ("clip order", order)):
            r = retrieve(
                RetrieveConfig(
                    data,
                    init=init,
                    out=os.path.join(out, "retrieve", name.replace(" ", "_")),
                    cache=cache,
                    frame_size=None,
                    crop=s["crop"],
                    clips=s["clips"],
                    clip_length=s["length"],
                    backbone="r3d_10",
                    width=0.25,
                    seed=cfg.seed,
                    modality=s["modality"] if init == "random" else "auto",
                    channels_last=False,  # slower at this size, as in training
                )
            )
            res[name] = r["video"]
            res[name + " (clips)"] = r["clip"]
        return res

    retr = st.run("retrieval", run_retrievals)

    def draw():
        from .checkpoint import load_encoder
        from .config import VisualizeConfig
        from .visualize import curves_figure, kernels_figure, retrieval_samples, visualize

        pics = os.path.join(out, "pictures")
        os.makedirs(pics, exist_ok=True)
        from .data.datasets import ucf101

        test = ucf101(data, 1, "test", progress=False)
        video = os.path.join(test.root, test.records[0].rel)
        p = {
            "attention": visualize(
                VisualizeConfig(
                    "attention",
                    rot,
                    video=video,
                    out=pics,
                    frame_size=(s["frame"], s["frame"]),
                    clip_length=s["length"],
                )
            )
        }
        p["kernels"] = kernels_figure(
            [
                ("rotation", load_encoder(rot).backbone.first_conv.weight),
                ("clip order", load_encoder(order).backbone.first_conv.weight),
            ],
            os.path.join(pics, "kernels.png"),
        )
        for name in ("random", "rotation", "clip order"):
            p[f"retrieval {name}"] = retrieval_samples(
                os.path.join(out, "retrieve", name.replace(" ", "_")),
                os.path.join(pics, f"retrieval-{name.replace(' ', '-')}.png"),
                queries=5,
                title=f"nearest training videos, {name} features",
            )
        for name in ("rotation", "clip-order"):
            p[f"curves {name}"] = curves_figure(
                os.path.join(out, f"pretrain-{name}", "log.csv"),
                os.path.join(pics, f"curves-{name}.png"),
                f"{name} pretraining",
            )
        return p

    pics = st.run("pictures", draw)
    summary = _pretext_summary(out)
    result = {
        "settings": {k: (str(v) if k == "synth" else v) for k, v in s.items()},
        "seed": cfg.seed,
        "pretext": summary,
        "finetune_top1": {f"{a} | {b}": v for (a, b), v in top1.items()},
        "retrieval": retr,
        "seconds": st.times,
        "pictures": pics,
        "test_videos": n_test,
        "classes": s["synth"].classes,
        "provenance": provenance([cfg.seed]),
    }
    st.run("report", _report, out, result, top1, retr, cfg.quick)
    return result


def _pretext_summary(out: str) -> dict:
    res = {}
    for name in ("rotation", "clip-order"):
        with open(os.path.join(out, f"pretrain-{name}", "summary.json")) as f:
            val = json.load(f)["val"]
        res[name] = {"val_loss": val.get("loss"), "val_acc": val.get("acc")}
    return res


def _se(p: float, n: int) -> str:
    """A test accuracy with its binomial standard error over the n test videos (one seed's spread)."""
    return f"{100 * p:.1f} +- {100 * (p * (1 - p) / max(n, 1)) ** 0.5:.1f}"


def _rows(result, top1, retr):
    n, classes = result["test_videos"], result["classes"]
    chance = {"rotation": 100 / 4, "clip-order": 100 / 6}  # 4 rotations; 3! orders of 3 clips
    p_rows = [
        {"pretext": k, "val accuracy": f"{100 * v['val_acc']:.1f}", "chance": f"{chance[k]:.1f}",
         "val loss": f"{v['val_loss']:.3f}"}
        for k, v in result["pretext"].items()
    ]  # fmt: skip
    ft_rows = []
    for labels in ("few-shot", "all"):
        row = {"labels": f"{result['settings']['shots']} per class" if labels == "few-shot" else labels}
        for name in ("scratch", "rotation", "clip order"):
            row[name] = _se(top1[(name, labels)], n)
        row["chance"] = f"{100 / classes:.1f}"
        row["rotation gain"] = f"{100 * (top1[('rotation', labels)] - top1[('scratch', labels)]):+.1f}"
        row["clip-order gain"] = f"{100 * (top1[('clip order', labels)] - top1[('scratch', labels)]):+.1f}"
        ft_rows.append(row)
    ks = [k for k in retr["random"] if int(k) <= 20]
    r_rows = [
        {"features": f, **{f"top-{k}": f"{100 * retr[f][k]:.1f}" for k in ks}}
        for f in ("random", "rotation", "clip order")
    ]
    r_rows.append({"features": "chance", **{f"top-{k}": f"{100 * (1 - (1 - 1 / classes) ** int(k)):.1f}" for k in ks}})
    t_rows = [{"stage": k, "seconds": f"{v:.0f}"} for k, v in result["seconds"].items()]
    return p_rows, ft_rows, r_rows, t_rows


CAPTIONS = {
    "pretext": "Accuracy of each pretext task on held-out training videos, beside chance: far above chance means "
    "the network solved the task it was given, not that its features transfer (the tables below say that).",
    "finetune": "Video top-1 on the test groups (people and scenes not seen in training), +- the binomial standard "
    "error over the test videos (one seed; the README gives the spread over seeds). A gain is the pretrained start "
    "minus scratch, both trained the same steps.",
    "retrieval": "Test videos query training videos by cosine similarity of frozen features; top-k: a video of the "
    "same class among the k nearest. Chance: k videos drawn at random.",
    "time": "Seconds per stage on this machine.",
    "attention": "Where the first block responds, one row per rotation: on a good rotation network it follows the "
    "moving actor in every rotation, not the background.",
    "kernels": "The first conv's kernels of each pretraining (RGB tiles, time left to right): smooth, oriented "
    "patterns that change over time are learned filters; noise means little was learned.",
    "retrieval pictures": "Each row: a test video (left) and its nearest training videos, each titled with its class "
    "(green: the query's class, red: another). Green rows mean the features group the actions.",
    "curves": "Training and validation loss and accuracy against steps: validation accuracy should rise above "
    "chance and stay near training accuracy (no overfitting).",
}


STAGE_KEYS = ("task", "backbone", "width", "modality", "clip_length", "crop", "batch_size", "iters", "optimizer",
              "lr", "weight_decay", "schedule", "warmup", "order_head", "shots", "test_clips")  # fmt: skip


def _stage_settings(out: str) -> dict:
    """The main settings of each training stage, read from the config.yaml it stored (the full
    configs are there: OUT/pretrain-*/config.yaml, OUT/finetune/*/config.yaml)."""
    import yaml

    found = {}
    for name in (
        "pretrain-rotation",
        "pretrain-clip-order",
        "finetune/scratch-few-shot",
        "finetune/scratch-all",
        "finetune/clip_order-all",
    ):
        path = os.path.join(out, name, "config.yaml")
        if os.path.isfile(path):
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
            found[name] = ", ".join(f"{k} {cfg[k]}" for k in STAGE_KEYS if cfg.get(k) is not None)
    return found


def _caption(picture: str) -> str:
    for key in ("attention", "kernels", "curves"):
        if picture.startswith(key):
            return CAPTIONS[key]
    return CAPTIONS["retrieval pictures"]


def _report(out, result, top1, retr, quick: bool):
    from .report import html_page

    p_rows, ft_rows, r_rows, t_rows = _rows(result, top1, retr)
    tables = [
        ("Pretext accuracy on held-out videos", p_rows, CAPTIONS["pretext"]),
        ("Fine-tuning: video top-1 % on the test split (group-disjoint)", ft_rows, CAPTIONS["finetune"]),
        ("Retrieval: video-level top-k % (test queries training videos)", r_rows, CAPTIONS["retrieval"]),
        ("Run time", t_rows, CAPTIONS["time"]),
    ]
    title = "vidssl demo: SMOKE TEST (--quick), not a result" if quick else "vidssl demo report"
    intro = (
        "A tiny dataset and a few steps check that every stage runs; its numbers mean nothing."
        if quick
        else "The whole method on the embedded synthetic dataset: pretraining by rotation and by clip order, then "
        "fine-tuning and retrieval against a start from scratch and random weights."
    )
    text = "\n\n".join(f"{name}\n{format_table(rows, list(rows[0]))}" for name, rows, _ in tables)
    print(("\n" + title.upper() + "\n" if quick else "\n") + text)
    facts = result["provenance"]
    md = [f"# {title}", "", intro, "", *[f"- {k}: {v}" for k, v in facts.items()], ""]
    for name, rows, caption in tables:
        md += [f"## {name}", "", *markdown_table(rows), "", caption, ""]
    pictures = [(k, v, _caption(k)) for k, v in result["pictures"].items()]
    md += ["## Pictures", ""] + [f"### {k}\n\n![{k}](pictures/{os.path.basename(v)})\n\n{c}\n" for k, v, c in pictures]
    md += ["## Settings", "", f"`{json.dumps(result['settings'])}`"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md))
    settings = {"seed": result["seed"], **result["settings"], **_stage_settings(out)}
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(html_page(title, intro, facts, settings, tables, pictures))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(f"\nreport: {os.path.join(out, 'report.html')} (one file, pictures inside; also report.md, report.json)")
