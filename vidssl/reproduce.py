"""`vidssl reproduce`: one command per paper table, our numbers beside the paper's.

A recipe (vidssl/recipes/NAME.yaml) is a list of stages, each one vidssl command with its config
(pretrain, finetune, retrieve, eval-pretext, fuse), and the table's rows: which stage's metric
stands beside which number of the paper (typed in from the paper, with the table and row it
comes from). Stages run in order, each in its own folder with a ``stage.json`` when done, so a
killed run continues where it stopped (a killed pretraining resumes from its last checkpoint); a
stage whose settings changed is refused, never silently reused.

``--scale full`` is the paper's protocol (the recipe's settings, presets included) on the real
datasets under ``--data``; ``--scale smoke`` runs the same stages through the same code on the
embedded synthetic dataset with CPU-sized settings (SMOKE below), in minutes: it checks the
pipeline, never the numbers, and its table says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from importlib.resources import files

import yaml

from . import config as C
from .config import ReproduceConfig
from .report import format_table, markdown_table

# CPU-sized settings of the smoke scale, per command, over each stage's own (clip lengths halved;
# None: the option is left unset).
SMOKE = {
    "pretrain": dict(width=0.25, frame_size=[40, 40], crop=32, batch_size=4, iters=6, lr=0.01, val_videos=4,
                     interval=4, workers=0, progress=False, tensorboard=False, channels_last=False, keep_every=1),
    "finetune": dict(width=None, frame_size=[40, 40], crop=32, batch_size=4, iters=6, epochs=None, test_clips=2,
                     workers=0, progress=False, tensorboard=False, channels_last=False),
    "retrieve": dict(width=0.25, frame_size=[40, 40], crop=32, clips=2, batch_size=4, progress=False),
    "eval-pretext": dict(batch_size=4, progress=False),
    "fuse": {},
    "visualize": dict(queries=3),
}  # fmt: skip
SMOKE_DATA = C.SynthConfig(classes=4, groups=6, clips=3, frames=72, height=48, width=64)
ROLES = {"kinetics": ("kinetics", "Kinetics"), "mit": ("mit", "MiT"), "ucf101": ("UCF101", "ucf101"),
         "hmdb51": ("HMDB51", "hmdb51")}  # fmt: skip
CLASSES = {"pretrain": "PretrainConfig", "finetune": "FinetuneConfig", "retrieve": "RetrieveConfig",
           "eval-pretext": "EvalPretextConfig", "fuse": "FuseConfig", "visualize": "VisualizeConfig"}  # fmt: skip


def recipes() -> dict[str, dict]:
    """Every recipe by name."""
    folder = files("vidssl") / "recipes"
    out = {}
    for p in sorted(folder.iterdir(), key=lambda p: p.name):
        if p.name.endswith(".yaml"):
            out[p.name[:-5]] = yaml.safe_load(p.read_text())
    return out


def list_recipes() -> list[dict]:
    return [
        {
            "recipe": name,
            "reproduces": f"{r['paper']} {r['source']}",
            "needs": ", ".join(r["needs"]),
            "stages": sum(len(s.get("splits", [None])) for s in r["stages"]),
        }  # fmt: skip
        for name, r in recipes().items()
    ]


def _data_roots(cfg: ReproduceConfig, needs: list[str]) -> dict[str, str]:
    """Where each dataset a recipe needs is: all of them the embedded dataset at smoke scale."""
    if cfg.scale == "smoke":
        root = cfg.data or os.path.join(os.path.dirname(cfg.out.rstrip("/")) or ".", "smoke-data")
        if os.path.isdir(root) and os.listdir(root) and not os.path.isdir(os.path.join(root, "UCF-101")):
            raise ValueError(f"{root}: smoke scale writes the embedded dataset into --data; give a new or empty folder")
        if not os.path.isdir(os.path.join(root, "UCF-101")) and _main():  # one process writes it
            from .data.synth import generate

            # One process: a fork pool inside a process that has run torch hung once (a worker
            # blocked on a futex forever, in the smoke test of CI); 72 small videos take seconds.
            generate(root, SMOKE_DATA, workers=1, progress=False)
        _barrier()
        return {role: root for role in needs}
    if not cfg.data:
        raise ValueError("--scale full needs --data ROOT, the folder holding the datasets (ROOT/UCF101, ...)")
    found, missing = {}, []
    for role in needs:
        cands = [os.path.join(cfg.data, n) for n in ROLES[role]]
        hit = next((c for c in cands if os.path.isdir(c)), None)
        (found.__setitem__(role, hit) if hit else missing.append(f"{role} ({' or '.join(cands)})"))
    if missing:
        raise FileNotFoundError(f"{cfg.data}: the recipe needs {', '.join(missing)}")
    return found


def _folder(out: str, stage: dict, split) -> str:
    return os.path.join(out, stage["name"] + (f"-split{split}" if split else ""))


def stage_config(cfg: ReproduceConfig, stage: dict, split, data: dict, done: dict):
    """The typed config a stage runs with: preset, the recipe's values, data, scale, runtime."""
    command = stage["command"]
    values = dict(C.preset(command, stage["preset"])) if stage.get("preset") else {}
    values.update(stage.get("config", {}))
    if command == "fuse":
        values.update(a=os.path.join(done[(stage["a"], split)]["folder"], "seed0"),
                      b=os.path.join(done[(stage["b"], split)]["folder"], "seed0"))  # fmt: skip
    elif command == "visualize":  # a picture of an earlier stage's output (retrieval neighbours)
        values.update(what=stage["what"], source=done[(stage["source"], split)]["folder"])
    else:
        values["dataset"] = data[stage["dataset"]]
        cache = os.path.join(values["dataset"] + "-cache")
        if cfg.scale == "full" and os.path.isfile(os.path.join(cache, "cache.json")):
            values["cache"] = cache
    if "gallery" in stage:
        values["gallery"] = data[stage["gallery"]]
    init = stage.get("init")  # scratch, random, a pretraining stage (its best checkpoint) or STAGE/checkpoints
    if init:
        if init in ("scratch", "random"):
            source = init
        elif init.endswith("/checkpoints"):  # every checkpoint it kept (eval-pretext series)
            source = os.path.join(done[(init.split("/")[0], None)]["folder"], "checkpoints")
        elif "@" in init:  # STAGE@F: the checkpoint it kept at fraction F of its steps (Fig. 4b)
            name, frac = init.split("@")
            entry = done[(name, None)]
            step = round(float(frac) * entry.get("steps", 0))
            source = os.path.join(entry["folder"], "checkpoints", f"step{step:07d}.json")
        else:
            source = done[(init, None)]["checkpoint"]
        values["init" if command != "eval-pretext" else "checkpoints"] = source
    if split:
        values["split"] = split
    if cfg.scale == "smoke":
        length = values.get("clip_length") or 16
        for k, v in SMOKE[command].items():  # None: leave the option unset
            if v is None:
                values.pop(k, None)
            else:
                values[k] = v
        if command in ("pretrain", "finetune", "retrieve"):
            values["clip_length"] = max(4, length // 2)
        if values.get("init") == "scratch" or values.get("init") == "random":
            values["width"] = 0.25
    if command == "finetune" and cfg.seeds:
        values["seeds"] = cfg.seeds
    if command not in ("fuse", "visualize"):
        values.update(device=cfg.device)
    values["out"] = _folder(cfg.out, stage, split)
    cls = getattr(C, CLASSES[command])
    known = {f for f in cls.__dataclass_fields__}
    return C.from_plain(cls, {k: v for k, v in values.items() if k in known}, f"recipe stage {stage['name']}")


def _metrics(command: str, result, folder: str) -> dict:
    """The numbers a stage gives a table, in % (with per-seed values where there are seeds)."""
    if command == "pretrain":
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        val = summary.get("val") or {}
        return {
            "checkpoint": result,
            "steps": summary["steps"],
            "metrics": {"val_acc": 100 * val.get("acc", float("nan"))},
        }
    if command == "finetune":
        s = result["summary"]
        return {"metrics": {"video_top1": 100 * s["video_top1"]["mean"], "clip_top1": 100 * s["clip_top1"]["mean"]},
                "values": {"video_top1": [100 * v for v in s["video_top1"]["values"]]}}  # fmt: skip
    if command == "retrieve":
        return {
            "metrics": {f"{lvl}_top{k}": 100 * v for lvl in ("video", "clip") for k, v in result.get(lvl, {}).items()}
        }
    if command == "eval-pretext":
        return {"metrics": {"pretext_acc": 100 * result[-1]["pretext_acc"]}}
    if command == "visualize":
        return {"picture": result, "metrics": {}}
    return {"metrics": {k: 100 * result[k] for k in ("a", "b", "fused")}}


def _run(command: str, stage_cfg):
    if command == "pretrain":
        from .pretrain import pretrain

        return pretrain(stage_cfg)
    if command == "finetune":
        from .finetune import finetune

        return finetune(stage_cfg)
    if command == "retrieve":
        from .retrieval import retrieve

        return retrieve(stage_cfg)
    if command == "eval-pretext":
        from .eval_pretext import eval_pretext

        return eval_pretext(stage_cfg)
    if command == "visualize":
        from .visualize import visualize

        return visualize(stage_cfg)
    from .fuse import fuse

    return fuse(stage_cfg)


def run_stage(cfg: ReproduceConfig, stage: dict, split, data: dict, done: dict) -> dict:
    """Run one stage, or read it back when it finished before with the same settings."""
    stage_cfg = stage_config(cfg, stage, split, data, done)
    folder = stage_cfg.out
    record = os.path.join(folder, "stage.json")
    plain = C.to_plain(stage_cfg)
    if os.path.isfile(record):  # finished before
        with open(record) as f:
            old = json.load(f)
        if old["config"] != plain:
            diff = sorted(k for k in set(old["config"]) | set(plain) if old["config"].get(k) != plain.get(k))
            raise ValueError(f"{record}: this stage ran with other settings ({', '.join(diff)}); use a new --out")
        return old
    if stage["command"] == "pretrain" and os.path.isfile(os.path.join(folder, "checkpoints", "last.json")):
        stage_cfg.resume = True  # killed before: continue from its last checkpoint
    elif getattr(stage_cfg, "overwrite", None) is False and os.path.isdir(folder) and os.listdir(folder):
        stage_cfg.overwrite = True  # killed before it finished: its partial files go to FOLDER.old-N
    if _main():
        print(
            f"[{cfg.name}] {stage['name']}{f' split {split}' if split else ''}: vidssl {stage['command']}", flush=True
        )
    start = time.time()
    result = _run(stage["command"], stage_cfg)
    _barrier()  # under torchrun: rank 0 has written the stage's files
    entry = {"config": plain, "folder": folder, "seconds": round(time.time() - start, 1),
             **_metrics(stage["command"], result, folder)}  # fmt: skip
    if _main():
        os.makedirs(folder, exist_ok=True)
        C.write_config(stage_cfg, folder, stage["command"])
        with open(record, "w") as f:
            json.dump(entry, f, indent=1)
    return entry


def _main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} +- {statistics.stdev(values):.1f} (n={len(values)})"


def table_rows(recipe: dict, done: dict) -> list[dict]:
    rows = []
    for row in recipe["rows"]:
        stage = next(s for s in recipe["stages"] if s["name"] == row["stage"])
        entries = [done[(stage["name"], sp)] for sp in stage.get("splits", [None])]
        if row["metric"] == "picture":  # a figure without numbers: where its picture is
            rows.append({"row": row["row"], "ours": entries[0]["picture"], "paper": "-", "difference": "-",
                         "metric": "picture", "source": row.get("source", recipe["source"])})  # fmt: skip
            continue
        if len(entries) == 1 and row["metric"] in entries[0].get("values", {}):
            values = entries[0]["values"][row["metric"]]  # one run per seed
        else:
            values = [e["metrics"][row["metric"]] for e in entries]  # one value per split
        ours = statistics.fmean(values)
        paper = row.get("paper")
        rows.append({
            "row": row["row"], "ours": _spread(values), "paper": "-" if paper is None else str(paper),
            "difference": "-" if paper is None else f"{ours - paper:+.1f}", "metric": row["metric"],
            "source": row.get("source", recipe["source"]),
        })  # fmt: skip
    return rows


def reproduce(cfg: ReproduceConfig) -> dict:
    """Run a recipe (or list them); returns and writes OUT/table.json and OUT/table.md."""
    all_recipes = recipes()
    if cfg.list or not cfg.name:
        rows = list_recipes()
        print(format_table(rows, list(rows[0])))
        return {"recipes": rows}
    if cfg.name not in all_recipes:
        raise ValueError(f"unknown recipe {cfg.name!r}; `vidssl reproduce --list` shows them")
    recipe = all_recipes[cfg.name]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one process group for every stage
        from .runtime import init_distributed

        init_distributed()
    if cfg.out is None:
        name = cfg.name + ("-smoke" if cfg.scale == "smoke" else "")
        cfg = dataclasses.replace(cfg, out=os.path.join("runs", "reproduce", name))
    data = _data_roots(cfg, recipe["needs"])
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.scale == "full":
        expected_time(cfg, recipe, data)
    done: dict = {}
    for stage in recipe["stages"]:
        for split in stage.get("splits", [None]):
            done[(stage["name"], split)] = run_stage(cfg, stage, split, data, done)
    rows = table_rows(recipe, done)
    smoke = cfg.scale == "smoke"
    title = f"{recipe['paper']} {recipe['source']}: {recipe['title']}"
    if smoke:
        title = "SMOKE TEST on the embedded synthetic dataset, NOT a reproduction: " + title
    times = [{"stage": n + (f" split {sp}" if sp else ""), "seconds": e["seconds"]} for (n, sp), e in done.items()]
    settings = {k: e["config"] for k, e in _named(done).items()}
    result = {"recipe": cfg.name, "title": title, "scale": cfg.scale, "data": data, "rows": rows, "times": times,
              "what": recipe.get("what", ""), "settings": settings}  # fmt: skip
    if not _main():
        return result
    text = (
        f"{title}\n{recipe.get('what', '')}\n\n{format_table(rows, ['row', 'ours', 'paper', 'difference', 'source'])}"
    )
    print("\n" + text + "\n\n" + format_table(times, ["stage", "seconds"]))
    with open(os.path.join(cfg.out, "table.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(f"# {title}\n\n{recipe.get('what', '')}\n\n")
        f.write("\n".join(markdown_table(rows, ["row", "ours", "paper", "difference", "source"])) + "\n\n")
        f.write("Wall time per stage (s):\n\n" + "\n".join(markdown_table(times, ["stage", "seconds"])) + "\n")
    return result


def seconds_per_clip(stage_cfg, command: str) -> float:
    """Training time per clip (or tuple) of a stage on this device: 2 timed steps of 2 random clips
    of the stage's size, after one warm-up step."""
    import torch

    from . import backbones
    from .runtime import Runtime
    from .tasks import PretextModel, build_task

    rt = Runtime.setup(stage_cfg)
    name = stage_cfg.backbone or "resnet18_3d"
    width = getattr(stage_cfg, "width", None) or 1.0
    backbone = backbones.build(name, width)
    shape = (2, 3, stage_cfg.clip_length or 16, stage_cfg.crop, stage_cfg.crop)  # inputs (DIF: differences)
    if command == "pretrain":
        model = rt.prepare(PretextModel(backbone, build_task(stage_cfg, backbone.num_features)), train=True)
        if stage_cfg.task != "rotation":
            shape = (2, stage_cfg.num_clips, *shape[1:])
        run = lambda x: model(x, torch.Generator().manual_seed(0))[0]
    else:
        head = torch.nn.Linear(backbone.num_features, 10)
        model = rt.prepare(torch.nn.Sequential(backbone, head), train=True)
        run = lambda x: model(x).logsumexp(1).mean()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    x = torch.randn(shape, device=rt.device)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with rt.autocast():
            loss = run(rt.input(x))
        loss.float().backward()
        opt.step()
        opt.zero_grad()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / 2 / shape[0]


def expected_time(cfg: ReproduceConfig, recipe: dict, data: dict) -> float:
    """Print, before a full-scale run, the training time each stage should take here: measured
    seconds per clip x clips per step x steps (steps from the video files counted, about)."""
    from .data.datasets import video_root
    from .data.video import list_videos

    counts, measured, total, rows = {}, {}, 0.0, []
    by_name = {s["name"]: s for s in recipe["stages"]}
    for stage in recipe["stages"]:
        if stage["command"] not in ("pretrain", "finetune"):
            continue
        stage_cfg = stage_config(cfg, stage, stage.get("splits", [None])[0], data, _Placeholder())
        if stage["command"] == "pretrain":
            stage_cfg = C.resolve_pretrain(stage_cfg)
        elif stage.get("init") in by_name:  # fine-tuning follows the network it starts from
            pre = C.resolve_pretrain(stage_config(cfg, by_name[stage["init"]], None, data, _Placeholder()))
            stage_cfg = dataclasses.replace(stage_cfg, backbone=pre.backbone, width=pre.width,
                                            clip_length=pre.clip_length, modality=pre.modality)  # fmt: skip
        root = stage_cfg.dataset
        counts.setdefault(root, len(list_videos(video_root(root))))
        batch = stage_cfg.batch_size
        steps = stage_cfg.iters or stage_cfg.epochs * max(1, counts[root] // batch)
        key = (stage["command"], stage_cfg.backbone, stage_cfg.width, stage_cfg.clip_length, stage_cfg.crop,
               getattr(stage_cfg, "task", None), getattr(stage_cfg, "rotations", None))  # fmt: skip
        if key not in measured:  # stages of one network and clip size share a measurement
            measured[key] = seconds_per_clip(stage_cfg, stage["command"])
        per_clip = measured[key]
        hours = per_clip * batch * steps * len(stage.get("splits", [None])) / 3600
        total += hours
        rows.append({"stage": stage["name"], "steps": f"{steps:,}", "s/step": f"{per_clip * batch:.2f}",
                     "hours": f"{hours:.1f}"})  # fmt: skip
    if rows and _main():
        print(f"expected training time here ({cfg.device}), measured per step, steps from the file counts:")
        print(
            format_table(rows, ["stage", "steps", "s/step", "hours"]) + f"\ntotal about {total:.1f} hours\n", flush=True
        )
    return total


class _Placeholder(dict):
    """Earlier stages' outputs before they exist (for the time estimate: any checkpoint name does)."""

    def __missing__(self, key):
        return {"checkpoint": "scratch", "folder": ""}


def _named(done: dict) -> dict:
    return {n + (f"-split{sp}" if sp else ""): e for (n, sp), e in done.items()}
