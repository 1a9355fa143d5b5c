import os

import pytest
from conftest import HMDB_SAMPLE, UCF_SAMPLE, copy_sample, needs_shared

from vidssl.data.datasets import hmdb51, ucf101
from vidssl.data.splits import SplitError, hmdb51_group, read_ucf101_split, ucf101_group

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "BenchPress", "Diving", "SoccerJuggling"]


def _ucf_lists(tmp_path, train_lines, test_lines, classes=UCF_CLASSES):
    d = tmp_path / "ucfTrainTestlist"
    d.mkdir(exist_ok=True)
    # Official files use CRLF line ends; keep that.
    (d / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    (d / "trainlist01.txt").write_text("".join(f"{line}\r\n" for line in train_lines))
    (d / "testlist01.txt").write_text("".join(f"{line}\r\n" for line in test_lines))
    return str(d)


@needs_shared
def test_ucf101_official_format_on_real_clips(tmp_path):
    train = [f"Diving/v_Diving_g01_c0{k}.avi 4" for k in (1, 2, 3)] + ["BenchPress/v_BenchPress_g01_c01.avi 3"]
    test = ["SoccerJuggling/v_SoccerJuggling_g23_c01.avi", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c02.avi"]
    splits = _ucf_lists(tmp_path, train, test)
    tr = ucf101(UCF_SAMPLE, 1, "train", splits_dir=splits)
    te = ucf101(UCF_SAMPLE, 1, "test", splits_dir=splits)
    assert tr.classes == UCF_CLASSES
    assert tr.labels == [3, 3, 3, 2] and te.labels == [4, 0]  # 0-based inside vidssl
    assert [r.group for r in te.records] == ["g23", "g01"]
    clip, label = tr[0]
    assert clip.shape == (3, 16, 240, 320) and label == 3


def test_handstand_pushups_spelling_is_resolved(tmp_path, make_video):
    # The official list says HandstandPushups/v_HandStandPushups_...; folders vary in case.
    make_video("UCF-101/HandStandPushups/v_HandStandPushups_g01_c01.avi", frames=20)
    splits = _ucf_lists(tmp_path, ["HandstandPushups/v_HandStandPushups_g01_c01.avi 1"], [], ["HandstandPushups"])
    ds = ucf101(str(tmp_path), 1, "train", splits_dir=splits)
    assert len(ds) == 1 and ds.labels == [0] and not ds.skipped


def test_malformed_and_missing_split_files(tmp_path, make_video):
    make_video("UCF-101/A/v_A_g01_c01.avi", frames=20)
    bad = _ucf_lists(tmp_path, ["A/v_A_g01_c01.avi"], [], ["A"])  # train line without label
    with pytest.raises(SplitError, match=r"trainlist01.txt:1: expected"):
        read_ucf101_split(bad, 1, "train")
    with pytest.raises(SplitError, match="trainlist02.txt: split file not found"):
        read_ucf101_split(bad, 2, "train")
    wrong = _ucf_lists(tmp_path, ["A/v_A_g01_c01.avi 2"], [], ["A"])
    with pytest.raises(SplitError, match="disagrees with classInd"):
        read_ucf101_split(wrong, 1, "train")
    unknown = _ucf_lists(tmp_path, ["B/v_B_g01_c01.avi 1"], [], ["A"])
    with pytest.raises(SplitError, match="not in classInd"):
        read_ucf101_split(unknown, 1, "train")
    escape = _ucf_lists(tmp_path, ["A/../../../etc/passwd 1"], [], ["A"])
    with pytest.raises(SplitError, match="leaves the dataset folder"):
        read_ucf101_split(escape, 1, "train")
    make_video("bare/UCF-101/A/v_A_g01_c01.avi", frames=20)
    with pytest.raises(SplitError, match="no ucfTrainTestlist"):
        ucf101(str(tmp_path / "bare"))
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        ucf101(str(tmp_path / "nowhere"))


def test_bad_split_lines_are_rejected_one_by_one(tmp_path, make_video, caplog):
    make_video("UCF-101/A/v_A_g01_c01.avi", frames=20)
    lines = [
        "A/v_A_g01_c01.avi 1",  # good
        "A/v_A_g02_c01.avi",  # no label
        "B/v_B_g01_c01.avi 1",  # class not in classInd.txt
        "A/v_A_g03_c01.avi 2",  # label of another class
        "A/../../../etc/passwd 1",  # leaves the dataset folder: never opened
        "C/v_C_g01_c01.avi 2",  # in classInd.txt, but no folder C/
    ]
    splits = _ucf_lists(tmp_path, lines, [], ["A", "C"])
    classes, items, rejected = read_ucf101_split(splits, 1, "train")
    assert items == [("A/v_A_g01_c01.avi", 0), ("C/v_C_g01_c01.avi", 1)]
    assert [line for line, _ in rejected] == lines[1:5]
    reasons = [why for _, why in rejected]
    for n, words in [(2, "expected '<Class>/<video>.avi <label>'"), (3, "'B' is not in classInd"),
                     (4, "disagrees with classInd"), (5, "leaves the dataset folder")]:  # fmt: skip
        assert reasons[n - 2].startswith(f"{splits}/trainlist01.txt:{n}: ") and words in reasons[n - 2]
    with caplog.at_level("WARNING", logger="vidssl"):
        ds = ucf101(str(tmp_path), 1, "train", splits_dir=splits)
    assert [r.rel for r in ds.records] == ["A/v_A_g01_c01.avi"] and len(ds.skipped) == 5
    assert "class folder is missing" in ds.skipped[-1][1]
    warned = [r.getMessage() for r in caplog.records]
    assert len([w for w in warned if w.startswith("skipping split line")]) == 4
    assert any("folder is missing" in w for w in warned)


def test_split_line_naming_a_missing_video_is_a_counted_skip(tmp_path, make_video):
    make_video("UCF-101/A/v_A_g01_c01.avi", frames=20)
    splits = _ucf_lists(tmp_path, ["A/v_A_g01_c01.avi 1", "A/v_A_g02_c01.avi 1"], [], ["A"])
    ds = ucf101(str(tmp_path), 1, "train", splits_dir=splits)
    assert len(ds) == 1
    assert len(ds.skipped) == 1 and "v_A_g02_c01.avi" in ds.skipped[0][1] and "not found" in ds.skipped[0][1]


def test_bad_video_in_a_split_is_skipped_not_fatal(tmp_path, make_video):
    make_video("UCF-101/A/v_A_g01_c01.avi", frames=20)
    (tmp_path / "UCF-101" / "A" / "v_A_g02_c01.avi").write_bytes(b"")
    make_video("UCF-101/A/v_A_g03_c01.avi", frames=8)  # too short for 16-frame clips
    lines = [f"A/v_A_g0{g}_c01.avi 1" for g in (1, 2, 3)]
    splits = _ucf_lists(tmp_path, lines, [], ["A"])
    ds = ucf101(str(tmp_path), 1, "train", splits_dir=splits)
    assert [r.rel for r in ds.records] == ["A/v_A_g01_c01.avi"]
    reasons = " ".join(r for _, r in ds.skipped)
    assert "empty" in reasons and "8 frames, shorter than the 16" in reasons
    looped = ucf101(str(tmp_path), 1, "train", splits_dir=splits, on_short="loop")
    assert len(looped) == 2 and looped.looped == 1
    clip, _ = looped[1]
    assert clip.shape[1] == 16


@needs_shared
def test_hmdb51_official_format(tmp_path):
    d = tmp_path / "testTrainMulti_7030_splits"
    d.mkdir()
    classes = sorted(os.listdir(HMDB_SAMPLE))
    for c in classes:
        names = sorted(os.listdir(os.path.join(HMDB_SAMPLE, c)))
        # 1 = train, 2 = test, 0 = unused; the official files end lines with a space
        tags = ["1", "2", "0"]
        (d / f"{c}_test_split1.txt").write_text("".join(f"{n} {tags[i % 3]} \n" for i, n in enumerate(names)))
    tr = hmdb51(HMDB_SAMPLE, 1, "train", splits_dir=str(d))
    te = hmdb51(HMDB_SAMPLE, 1, "test", splits_dir=str(d))
    assert tr.classes == classes and len(tr) == 7 and len(te) == 1
    assert te.records[0].rel.startswith("wave/") and te.labels == [classes.index("wave")]
    assert hmdb51_group("wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi") == "RATRACE"
    (d / "wave_test_split1.txt").write_text("RATRACE_wave_f_nm_np1_fr_goo_37.avi 7\n")
    bad_line = hmdb51(HMDB_SAMPLE, 1, "train", splits_dir=str(d))  # that line only is rejected
    assert len(bad_line) == 7 - sum(r.rel.startswith("wave/") for r in tr.records)
    assert [why for _, why in bad_line.skipped if "wave_test_split1.txt:1: expected" in why]
    for c in classes:
        (d / f"{c}_test_split1.txt").write_text("garbage\n")
    with pytest.raises(SplitError, match="no usable line; the first: .*_test_split1.txt:1"):
        hmdb51(HMDB_SAMPLE, 1, "train", splits_dir=str(d))


def test_ucf_group_parsing():
    assert ucf101_group("Diving/v_Diving_g07_c03.avi") == "g07"


@needs_shared
def test_real_clip_copy_loads_from_a_fresh_layout(tmp_path):
    copy_sample(os.path.join(UCF_SAMPLE, "Diving", "v_Diving_g01_c01.avi"), tmp_path / "UCF-101" / "Diving")
    splits = _ucf_lists(tmp_path, ["Diving/v_Diving_g01_c01.avi 4"], [])
    assert len(ucf101(str(tmp_path), 1, "train", splits_dir=splits)) == 1
