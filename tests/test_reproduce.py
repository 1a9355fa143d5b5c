"""`vidssl reproduce`: every paper table has a well-formed recipe; two run end to end at smoke scale
(one per paper) with a complete table; stages resume and refuse changed settings; the full-scale
time estimate."""

import dataclasses
import json
import os

import pytest

from vidssl import estimate as E
from vidssl import reproduce as R
from vidssl.cli import main
from vidssl.config import ReproduceConfig

EXPECTED = {  # every table and figure the recipes cover, by recipe name
    "3drotnet-table1", "3drotnet-table2", "3drotnet-table3", "3drotnet-table4", "3drotnet-table5", "3drotnet-table6",
    "3drotnet-table7", "3drotnet-fig4a", "3drotnet-fig4b", "3drotnet-rotations", "vcop-table1", "vcop-table2",
    "vcop-table3", "vcop-table4", "vcop-fig6",
}  # fmt: skip


def test_every_recipe_is_listed_and_well_formed(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert EXPECTED <= set(R.recipes()) and all(name in listing for name in EXPECTED)
    cfg = ReproduceConfig("x", scale="smoke", out=str(tmp_path))
    for name, recipe in R.recipes().items():
        stages = {s["name"]: s for s in recipe["stages"]}
        assert len(stages) == len(recipe["stages"]), f"{name}: two stages share a name"
        for row in recipe["rows"]:
            assert row["stage"] in stages, f"{name}: row {row['row']!r} names no stage"
            assert row["paper"] is None or isinstance(row["paper"], float), f"{name}: {row}"
        data = {role: str(tmp_path) for role in recipe["needs"]}
        for stage in recipe["stages"]:  # every stage's config is valid for its command, at both scales
            for scale in ("smoke", "full"):
                c = ReproduceConfig(name, scale=scale, out=str(tmp_path))
                stage_cfg = R.stage_config(c, stage, *R.runs(c, stage)[0], data, E._Placeholder())
                if name.startswith("weizmann"):  # its figures are fp32's; a CPU with AMX would pick bf16
                    assert stage_cfg.bf16 is False, f"{name}: {stage['name']} does not pin fp32"
    assert cfg.scale == "smoke"
    # a preset's unset option stays unset at smoke scale (VCOP's validation videos: 800 / 400, capped)
    vcop = next(s for s in R.recipes()["vcop-table4"]["stages"] if s.get("preset") == "vcop")
    ft = R.stage_config(cfg, vcop, 1, None, {"ucf101": "d", "hmdb51": "d"}, E._Placeholder())
    assert ft.val_videos is None and ft.test_checkpoint == "best" and ft.iters == 6


@pytest.mark.parametrize("name", ["3drotnet-table3", "vcop-table1"])
def test_a_recipe_at_smoke_scale_writes_a_complete_table_and_resumes(name, tmp_path, capsys):
    out = tmp_path / name
    args = ["reproduce", name, "--scale", "smoke", "--out", str(out), "--data", str(tmp_path / "data")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = json.load(open(out / "table.json"))
    recipe = R.recipes()[name]
    assert table["title"].startswith("SMOKE TEST") and "NOT a reproduction" in printed
    assert [r["row"] for r in table["rows"]] == [r["row"] for r in recipe["rows"]]
    for row in table["rows"]:
        float(row["ours"].split()[0])  # a number, for every row
        assert row["paper"] != "-" and row["difference"].startswith(("+", "-")) and row["source"].startswith("Table")
    assert len(table["times"]) == len(recipe["stages"]) and "Wall time per stage" in open(out / "table.md").read()
    page = open(out / "table.html").read()  # the shareable page: titled a smoke test, with where it ran
    assert "SMOKE TEST" in page.split("</title>")[0] and "<td>device</td>" in page and "<td>torch</td>" in page
    # Again: every stage is read back, none is run; also records written before an option existed
    # (one added to vidssl later, at its default, is the same run).
    for record in out.glob("*/stage.json"):
        entry = json.load(open(record))
        if "lr_milestones" in entry["config"]:
            del entry["config"]["lr_milestones"]
            json.dump(entry, open(record, "w"))
    assert main(args) == 0
    assert f"[{name}]" not in capsys.readouterr().out
    # A stage whose record is gone (a killed run) runs again, alone.
    last = recipe["stages"][-1]["name"]
    os.remove(out / last / "stage.json")
    assert main(args) == 0
    reran = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"[{name}]")]
    assert reran == [f"[{name}] {last}: vidssl {recipe['stages'][-1]['command']}"]
    # Changed settings are refused, never mixed in.
    assert main([*args, "--seeds", "3"]) == 2 or name == "vcop-table1"  # (vcop-table1 has no fine-tuning)
    assert main(["reproduce", "nope", "--scale", "smoke"]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("a user's folder")
    assert main(["reproduce", name, "--scale", "smoke", "--data", str(tmp_path / "mine"), "--out", str(out)]) == 2
    assert "give a new or empty folder" in capsys.readouterr().err and os.listdir(tmp_path / "mine") == ["precious.txt"]


def test_full_scale_prints_the_expected_time_from_measured_steps(tiny_synth, tmp_path, monkeypatch, capsys):
    os.symlink(tiny_synth, tmp_path / "UCF101")
    cfg = ReproduceConfig("vcop-table1", data=str(tmp_path), out=str(tmp_path / "out"))
    recipe = R.recipes()["vcop-table1"]
    monkeypatch.setattr(E, "seconds_per_clip", lambda stage_cfg, command: 0.5)
    hours = E.expected_time(cfg, recipe, R._data_roots(cfg, recipe["needs"]))
    printed = capsys.readouterr().out
    # clip order: 300 epochs of 18 // 8 = 2 steps of 8 tuples at 0.5 s a tuple, for each of 3 backbones
    assert "600" in printed and "4.00" in printed and hours == pytest.approx(3 * 600 * 8 * 0.5 / 3600)
    monkeypatch.undo()
    small = dict(backbone="r3d_10", width=0.25, clip_length=8, crop=32, device="cpu", channels_last=False)
    from vidssl.config import FinetuneConfig, PretrainConfig

    assert 0 < E.seconds_per_clip(PretrainConfig("d", task="clip_order", **small), "pretrain") < 60
    assert 0 < E.seconds_per_clip(PretrainConfig("d", task="random_labels", **small), "pretrain") < 60
    assert 0 < E.seconds_per_clip(FinetuneConfig("d", **small), "finetune") < 60


def test_stages_run_per_split_and_seed_and_gain_rows_pair_runs(tmp_path, monkeypatch, capsys):
    """The Weizmann recipe's machinery (a part of it, one split, two seeds, at smoke scale): every
    stage runs once per (split, seed) into its own folder, a later stage takes the checkpoint of
    the same split and seed, a gain row is the difference run by run, and `--seeds` adds runs
    without redoing the others."""
    full = R.recipes()["weizmann"]
    keep = {"pretrain-rotation", "probe-random", "probe-rotation", "finetune-scratch", "finetune-rotation"}
    stages = [dict(s, splits=[1], seeds=[0, 1]) for s in full["stages"] if s["name"] in keep]
    rows = [r for r in full["rows"] if r["stage"] in keep and r.get("minus", "probe-random") in keep]
    recipe = dict(full, stages=stages, rows=rows)
    monkeypatch.setattr(R, "recipes", lambda: {"weizmann": recipe})
    out = tmp_path / "wz"
    cfg = ReproduceConfig("weizmann", scale="smoke", out=str(out), data=str(tmp_path / "data"))
    table = R.reproduce(cfg)
    assert sorted(os.listdir(out)) == sorted(
        [f"{s['name']}-split1-seed{k}" for s in stages for k in (0, 1)] + ["table.html", "table.json", "table.md"]
    )
    record = lambda name, seed: json.load(open(out / f"{name}-split1-seed{seed}" / "stage.json"))
    for seed in (0, 1):
        pre = record("pretrain-rotation", seed)
        assert pre["config"]["seed"] == seed and pre["config"]["split"] == 1
        assert record("probe-rotation", seed)["config"]["init"] == pre["checkpoint"]
        assert record("finetune-rotation", seed)["config"]["init"] == pre["checkpoint"]
        assert record("finetune-rotation", seed)["config"]["seeds"] == str(seed)
        assert record("probe-random", seed)["config"]["seed"] == seed
    by_row = {r["row"]: r for r in table["rows"]}
    assert by_row["kNN, rotation pretraining"]["chance"] == "10"
    gain = next(r for r in table["rows"] if r["row"].startswith("GAIN kNN: rotation - random"))
    diffs = [record("probe-rotation", k)["metrics"]["knn_top1"] - record("probe-random", k)["metrics"]["knn_top1"]
             for k in (0, 1)]  # fmt: skip
    assert gain["ours"].startswith(f"{sum(diffs) / 2:.1f}") and "(n=2)" in gain["ours"]
    header = open(out / "table.md").read().split("| row |")[1].splitlines()[0]
    assert "chance" in header and "paper" not in header  # no paper number: no empty paper columns
    capsys.readouterr()
    # One more seed: only its stages run.
    R.reproduce(dataclasses.replace(cfg, seeds="0,1,2"))
    ran = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[weizmann]")]
    assert len(ran) == len(stages) and all(line.split(":")[0].endswith("seed 2") for line in ran)
    # A part of it (`--stages`): read back, nothing runs, and its table says it is a part.
    part = R.reproduce(dataclasses.replace(cfg, seeds="0,1,2", stages="probe-rotation"))
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("[weizmann]")]
    assert part["title"].endswith("(only the stages pretrain-rotation, probe-rotation)")
    assert {r["row"] for r in part["rows"]} == {r["row"] for r in rows if r["stage"] == "probe-rotation"
                                                and "minus" not in r}  # fmt: skip


def test_a_stage_starts_from_the_best_or_the_last_weights_of_its_own_split_and_seed(tmp_path):
    """`init: STAGE` is the checkpoint its validation loss picked; `STAGE/last` the last step's, for a
    validation set of a few videos whose loss picks by noise (Weizmann clip order: step 64 of 300)."""
    cfg = ReproduceConfig("weizmann", out=str(tmp_path))
    done = {("pre", s, k): {"folder": f"/runs/pre-{s}-{k}", "checkpoint": f"/runs/pre-{s}-{k}/checkpoints/best.json"}
            for s in (4, 5) for k in (0, 1)}  # fmt: skip
    stage = {"name": "knn", "command": "probe", "dataset": "weizmann", "init": "pre", "config": {"k": 5}}
    data = {"weizmann": str(tmp_path)}
    assert R.stage_config(cfg, stage, 5, 1, data, done).init == "/runs/pre-5-1/checkpoints/best.json"
    last = R.stage_config(cfg, dict(stage, init="pre/last"), 5, 1, data, done)
    assert (last.init, last.split, last.seed) == ("/runs/pre-5-1/checkpoints/last.json", 5, 1)


def test_the_time_estimate_follows_a_fine_tuning_to_the_network_it_starts_from(tiny_synth, tmp_path, monkeypatch):
    """A fine-tuning that starts from STAGE/last (or STAGE@F) is timed on that pretraining's network,
    as one from STAGE is (it was timed on the default full-width network: 1.43 s a step, not 0.08)."""
    pre = {"task": "clip_order", "backbone": "r3d_10", "width": 0.25, "clip_length": 8, "iters": 4}
    ft = {"backbone": None, "width": None, "iters": 4, "epochs": None}
    inits = ("pre", "pre/last", "pre@0.5")
    stages = [{"name": "pre", "command": "pretrain", "dataset": "ucf101", "config": pre}] + [
        {"name": f"ft{i}", "command": "finetune", "dataset": "ucf101", "init": init, "config": ft}
        for i, init in enumerate(inits)
    ]
    timed = []
    monkeypatch.setattr(E, "seconds_per_clip", lambda c, command: timed.append((c.backbone, c.width)) or 0.1)
    cfg = ReproduceConfig("x", out=str(tmp_path / "out"))
    E.expected_time(cfg, {"stages": stages}, {"ucf101": tiny_synth})
    assert timed == [("r3d_10", 0.25)] * 2  # one measurement for the pretraining, one shared by all three fine-tunings


def test_stages_selects_a_part_of_a_recipe_with_what_it_starts_from():
    """`--stages A,B` runs A, B and the stages they start from (transitively, also through
    STAGE/last), in the recipe's order; the table keeps the rows whose stages (and `minus`) ran."""
    full = R.recipes()["weizmann-validation"]
    part = R.select_stages(full, "finetune-order-900-lr1e-3, knn-order-900-last")
    assert [s["name"] for s in part["stages"]] == ["pretrain-order-900", "knn-order-900-last",
                                                   "finetune-order-900-lr1e-3"]  # fmt: skip
    kept = {s["name"] for s in part["stages"]}
    assert part["rows"] and all(r["stage"] in kept and r.get("minus", r["stage"]) in kept for r in part["rows"])
    gains = [r for r in full["rows"] if r["stage"] == "finetune-order-900-lr1e-3" and "minus" in r]
    assert gains and not any(r in part["rows"] for r in gains)  # their scratch stages did not run
    both = R.select_stages(full, "finetune-order-900-lr1e-3,finetune-scratch-lr1e-3")
    assert sum(r["stage"] == "finetune-order-900-lr1e-3" and "minus" in r for r in both["rows"]) == 1
    assert R.select_stages(full, None) is full
    fusion = R.select_stages(R.recipes()["3drotnet-table7"], "fusion-hmdb51")  # a fusion reads two fine-tunings
    assert [s["name"] for s in fusion["stages"]] == ["pretrain-rgb", "pretrain-dif", "rgb-hmdb51", "dif-hmdb51",
                                                     "fusion-hmdb51"]  # fmt: skip
    with pytest.raises(ValueError, match="no stage finetune-nope in this recipe; it has pretrain-order"):
        R.select_stages(full, "finetune-nope")
