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
import importlib
import json
import os
import statistics
import time
from importlib.resources import files

import yaml

from . import config as C
from .config import ReproduceConfig
from .report import format_table, html_page, markdown_table, provenance

# CPU-sized settings of the smoke scale, per command, over each stage's own (clip lengths halved;
# None: the option is left unset).
SMOKE = {
    "pretrain": dict(width=0.25, frame_size=[40, 40], crop=32, batch_size=4, iters=6, lr=0.01, val_videos=4,
                     interval=4, workers=0, progress=False, tensorboard=False, channels_last=False, keep_every=1),
    "finetune": dict(width=None, frame_size=[40, 40], crop=32, batch_size=4, iters=6, epochs=None, test_clips=2,
                     workers=0, progress=False, tensorboard=False, channels_last=False),
    "retrieve": dict(width=0.25, frame_size=[40, 40], crop=32, clips=2, batch_size=4, progress=False),
    "eval-pretext": dict(batch_size=4, progress=False),
    "probe": dict(width=0.25, frame_size=[40, 40], crop=32, clips=2, batch_size=4, k=5, progress=False),
    "fuse": {},
    "visualize": dict(queries=3),
}  # fmt: skip
SMOKE_DATA = C.SynthConfig(classes=4, groups=6, clips=3, frames=72, height=48, width=64)
ROLES = {"kinetics": ("kinetics", "Kinetics"), "mit": ("mit", "MiT"), "ucf101": ("UCF101", "ucf101"),
         "hmdb51": ("HMDB51", "hmdb51"), "weizmann": ("weizmann", "Weizmann")}  # fmt: skip
CLASSES = {"pretrain": "PretrainConfig", "finetune": "FinetuneConfig", "retrieve": "RetrieveConfig",
           "eval-pretext": "EvalPretextConfig", "fuse": "FuseConfig", "visualize": "VisualizeConfig",
           "probe": "ProbeConfig"}  # fmt: skip


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
            "stages": sum(len(s.get("splits", [None])) * len(s.get("seeds", [None])) for s in r["stages"]),
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


def select_stages(recipe: dict, names: str | None) -> dict:
    """The recipe cut to the stages named (comma-separated) and the earlier ones they start from or
    read (init, fuse's a and b, a picture's source); its rows, those whose stages all run."""
    if not names:
        return recipe
    by_name = {s["name"]: s for s in recipe["stages"]}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"--stages: no stage {', '.join(unknown)} in this recipe; it has {', '.join(by_name)}")
    keep: set = set()
    while wanted:
        name = wanted.pop()
        if name not in keep:
            keep.add(name)
            s = by_name[name]
            wanted += [n for n in (init_stage(s.get("init")), s.get("a"), s.get("b"), s.get("source")) if n]
    rows = [r for r in recipe["rows"] if r["stage"] in keep and r.get("minus", r["stage"]) in keep]
    return dict(recipe, stages=[s for s in recipe["stages"] if s["name"] in keep], rows=rows)


def runs(cfg: ReproduceConfig, stage: dict) -> list[tuple]:
    """The (split, seed) pairs a stage runs for: its ``splits`` times its ``seeds`` (a stage with
    seeds runs once per seed, that seed its config's seed; ``--seeds`` replaces the list)."""
    seeds = stage.get("seeds", [None])
    if cfg.seeds and "seeds" in stage:
        seeds = [int(s) for s in cfg.seeds.split(",")]
    return [(split, seed) for split in stage.get("splits", [None]) for seed in seeds]


def _folder(out: str, stage: dict, split, seed=None) -> str:
    return os.path.join(out, _run_name((stage["name"], split, seed)))


def _earlier(done: dict, name: str, split, seed) -> dict:
    """An earlier stage's record: the one of the same split and seed, else of the same split, else its only one."""
    for key in ((name, split, seed), (name, split, None), (name, None, None)):
        if key in done:
            return done[key]
    return done[(name, split, seed)]  # a KeyError (or the time estimate's placeholder)


def init_stage(init: str | None) -> str | None:
    """The earlier stage an ``init`` names (STAGE, STAGE/last, STAGE/checkpoints, STAGE@F), or None."""
    if init in (None, "scratch", "random"):
        return None
    return init.split("@")[0].split("/")[0]


def stage_config(cfg: ReproduceConfig, stage: dict, split, seed, data: dict, done: dict):
    """The typed config a stage runs with: preset, the recipe's values, data, scale, runtime."""
    command = stage["command"]
    values = dict(C.preset(command, stage["preset"])) if stage.get("preset") else {}
    values.update(stage.get("config", {}))
    if command == "fuse":
        values.update(a=os.path.join(_earlier(done, stage["a"], split, seed)["folder"], "seed0"),
                      b=os.path.join(_earlier(done, stage["b"], split, seed)["folder"], "seed0"))  # fmt: skip
    elif command == "visualize":  # a picture of an earlier stage's output (retrieval neighbours)
        values.update(what=stage["what"], source=_earlier(done, stage["source"], split, seed)["folder"])
    else:
        values["dataset"] = data[stage["dataset"]]
        cache = os.path.join(values["dataset"] + "-cache")
        if cfg.scale == "full" and os.path.isfile(os.path.join(cache, "cache.json")):
            values["cache"] = cache
    if "gallery" in stage:
        values["gallery"] = data[stage["gallery"]]
    # scratch, random, a pretraining stage (its best checkpoint), STAGE/last or STAGE/checkpoints
    init = stage.get("init")
    if init:
        if init in ("scratch", "random"):
            source = init
        elif init.endswith(("/checkpoints", "/last")):
            source = os.path.join(_earlier(done, init_stage(init), split, seed)["folder"], "checkpoints")
            if init.endswith("/last"):  # its last step's weights: not picked by a validation loss of a few videos
                source = os.path.join(source, "last.json")  # (/checkpoints: every one it kept, eval-pretext)
        elif "@" in init:  # STAGE@F: the checkpoint it kept at fraction F of its steps (Fig. 4b)
            frac = init.split("@")[1]
            entry = _earlier(done, init_stage(init), split, seed)
            step = round(float(frac) * entry.get("steps", 0))
            source = os.path.join(entry["folder"], "checkpoints", f"step{step:07d}.json")
        else:
            source = _earlier(done, init, split, seed)["checkpoint"]
        values["init" if command != "eval-pretext" else "checkpoints"] = source
    if split:
        values["split"] = split
    if seed is not None and command == "finetune":
        values["seeds"] = str(seed)  # a fine-tuning takes its seeds as a comma-separated list
    elif seed is not None:
        values["seed"] = seed
    if cfg.scale == "smoke":
        length = values.get("clip_length") or 16
        for k, v in SMOKE[command].items():  # None: leave the option unset
            if v is None:
                values.pop(k, None)
            else:
                values[k] = v
        if command in ("pretrain", "finetune", "retrieve", "probe"):
            values["clip_length"] = max(4, length // 2)
        if values.get("init") == "scratch" or values.get("init") == "random":
            values["width"] = 0.25
    if command == "finetune" and cfg.seeds and "seeds" not in stage:
        values["seeds"] = cfg.seeds
    if command not in ("fuse", "visualize"):
        values.update(device=cfg.device)
    values["out"] = _folder(cfg.out, stage, split, seed)
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
    if command == "probe":
        return {"metrics": {k: 100 * result[k] for k in ("linear_top1", "knn_top1")}}
    if command == "visualize":
        return {"picture": result, "metrics": {}}
    return {"metrics": {k: 100 * result[k] for k in ("a", "b", "fused")}}


def _run(command: str, stage_cfg):
    # pretrain, finetune, visualize, probe, fuse: the module and its function share the command's name
    renamed = {"retrieve": ("retrieval", "retrieve"), "eval-pretext": ("eval_pretext", "eval_pretext")}
    module, function = renamed.get(command, (command, command))
    return getattr(importlib.import_module(f".{module}", __package__), function)(stage_cfg)


def _differences(old: dict, new: dict, cls) -> list[str]:
    """Settings that differ between a stage's record and its config now. An option added to vidssl
    after the record was written, at its default, is no difference: the run is the same."""
    defaults = json.loads(json.dumps(C.plain_defaults(cls)))
    changed = (k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return sorted(k for k in changed if not C.gained_since(k, old, new, defaults))


def run_stage(cfg: ReproduceConfig, stage: dict, split, seed, data: dict, done: dict) -> dict:
    """Run one stage, or read it back when it finished before with the same settings."""
    stage_cfg = stage_config(cfg, stage, split, seed, data, done)
    folder = stage_cfg.out
    record = os.path.join(folder, "stage.json")
    plain = C.to_plain(stage_cfg)
    if os.path.isfile(record):  # finished before
        with open(record) as f:
            old = json.load(f)
        diff = _differences(old["config"], plain, type(stage_cfg))
        if diff:
            raise ValueError(f"{record}: this stage ran with other settings ({', '.join(diff)}); use a new --out")
        return old
    if stage["command"] == "pretrain" and os.path.isfile(os.path.join(folder, "checkpoints", "last.json")):
        stage_cfg.resume = True  # killed before: continue from its last checkpoint
    elif getattr(stage_cfg, "overwrite", None) is False and os.path.isdir(folder) and os.listdir(folder):
        stage_cfg.overwrite = True  # killed before it finished: its partial files go to FOLDER.old-N
    if _main():
        where = (f" split {split}" if split else "") + (f" seed {seed}" if seed is not None else "")
        print(f"[{cfg.name}] {stage['name']}{where}: vidssl {stage['command']}", flush=True)
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


def _values(cfg: ReproduceConfig, recipe: dict, done: dict, name: str, metric: str) -> list[float]:
    """A stage's metric, one value per run: per split and seed, or per seed of a single fine-tuning."""
    stage = next(s for s in recipe["stages"] if s["name"] == name)
    entries = [done[(name, *run)] for run in runs(cfg, stage)]
    if len(entries) == 1 and metric in entries[0].get("values", {}):
        return entries[0]["values"][metric]  # one run per seed
    return [e["metrics"][metric] for e in entries]  # one value per split (and seed), as before


def table_rows(cfg: ReproduceConfig, recipe: dict, done: dict) -> list[dict]:
    """One row per recipe row. A row with ``minus: STAGE`` is the difference to that stage, run by
    run (same split and seed), e.g. a pretraining's gain over random weights."""
    rows = []
    for row in recipe["rows"]:
        source = row.get("source", recipe["source"])
        if row["metric"] == "picture":  # a figure without numbers: where its picture is
            stage = next(s for s in recipe["stages"] if s["name"] == row["stage"])
            first = done[(row["stage"], *runs(cfg, stage)[0])]
            rows.append({"row": row["row"], "ours": first["picture"], "paper": "-", "difference": "-",
                         "metric": "picture", "source": source})  # fmt: skip
            continue
        values = _values(cfg, recipe, done, row["stage"], row["metric"])
        if row.get("minus"):
            other = _values(cfg, recipe, done, row["minus"], row.get("minus_metric", row["metric"]))
            if len(other) != len(values):
                raise ValueError(f"recipe row {row['row']!r}: {row['stage']} and {row['minus']} differ in runs")
            values = [a - b for a, b in zip(values, other)]
        ours = statistics.fmean(values)
        paper = row.get("paper")
        rows.append({
            "row": row["row"], "ours": _spread(values), "paper": "-" if paper is None else str(paper),
            "difference": "-" if paper is None else f"{ours - paper:+.1f}", "metric": row["metric"],
            "source": source, **({"chance": str(row["chance"])} if "chance" in row else {}),
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
    recipe = select_stages(all_recipes[cfg.name], cfg.stages)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one process group for every stage
        from .runtime import init_distributed

        init_distributed()
    if cfg.out is None:
        name = cfg.name + ("-smoke" if cfg.scale == "smoke" else "")
        cfg = dataclasses.replace(cfg, out=os.path.join("runs", "reproduce", name))
    data = _data_roots(cfg, recipe["needs"])
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.scale == "full":
        from .estimate import expected_time

        expected_time(cfg, recipe, data)
    done: dict = {}
    for stage in recipe["stages"]:
        for split, seed in runs(cfg, stage):
            done[(stage["name"], split, seed)] = run_stage(cfg, stage, split, seed, data, done)
    rows = table_rows(cfg, recipe, done)
    smoke = cfg.scale == "smoke"
    title = f"{recipe['paper']} {recipe['source']}: {recipe['title']}"
    if cfg.stages:  # a part of the table: never to be taken for all of it
        title += f" (only the stages {', '.join(s['name'] for s in recipe['stages'])})"
    if smoke:
        title = "SMOKE TEST on the embedded synthetic dataset, NOT a reproduction: " + title
    times = [{"stage": _run_name(key, " "), "seconds": e["seconds"]} for key, e in done.items()]
    settings = {k: e["config"] for k, e in _named(done).items()}
    result = {"recipe": cfg.name, "title": title, "scale": cfg.scale, "data": data, "rows": rows, "times": times,
              "what": recipe.get("what", ""), "settings": settings}  # fmt: skip
    if not _main():
        return result
    chance = ["chance"] if any("chance" in r for r in rows) else []
    paper = ["paper", "difference"] if any(r["paper"] != "-" for r in rows) else []  # none: not a paper table
    columns = ["row", "ours", *chance, *paper, "source"]
    text = f"{title}\n{recipe.get('what', '')}\n\n{format_table(rows, columns)}"
    print("\n" + text + "\n\n" + format_table(times, ["stage", "seconds"]))
    with open(os.path.join(cfg.out, "table.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(cfg.out, "table.md"), "w") as f:
        f.write(f"# {title}\n\n{recipe.get('what', '')}\n\n")
        f.write("\n".join(markdown_table(rows, columns)) + "\n\n")
        f.write("Wall time per stage (s):\n\n" + "\n".join(markdown_table(times, ["stage", "seconds"])) + "\n")
    seeds = sorted({seed for _, _, seed in done if seed is not None})
    caption = ("ours: mean +- sample std over the runs named in source (seeds, splits, folds); chance beside; "
               "paper: the number typed in from the paper, where it stands there")  # fmt: skip
    tables = [("Result", [{c: r.get(c, "") for c in columns} for r in rows], caption),
              ("Wall time per stage (s)", times, "On the device named above.")]  # fmt: skip
    page = html_page(
        title, recipe.get("what", ""), provenance(seeds), {"recipe": cfg.name, "scale": cfg.scale}, tables, []
    )
    with open(os.path.join(cfg.out, "table.html"), "w") as f:
        f.write(page)
    return result


def _run_name(key: tuple, sep: str = "-") -> str:
    """A run's name: ``name-split1-seed0`` (folders, settings), ``name split 1 seed 0`` (tables)."""
    name, split, seed = key
    gap = " " if sep == " " else ""
    return name + (f"{sep}split{gap}{split}" if split else "") + (f"{sep}seed{gap}{seed}" if seed is not None else "")


def _named(done: dict) -> dict:
    return {_run_name(key): e for key, e in done.items()}
