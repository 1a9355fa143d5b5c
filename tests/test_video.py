import glob
import os

import numpy as np
import pytest
from conftest import HMDB_SAMPLE, SHARED_DATA, UCF_SAMPLE, needs_shared

from vidssl.data.video import VideoError, _decode_by_seek, _open, probe, read_frames, read_indices


def _readme_table():
    """(path, fps, width, height, frames) rows of ../shared/data/README.md."""
    rows = []
    with open(os.path.join(SHARED_DATA, "README.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 8 and cells[0].endswith(".avi"):
                w, h = map(int, cells[4].split("x"))
                rows.append((os.path.join(SHARED_DATA, cells[0]), float(cells[5]), w, h, int(cells[6])))
    return rows


@needs_shared
def test_metadata_of_real_clips_matches_the_data_readme():
    rows = _readme_table()
    assert len(rows) == 27
    for path, fps, w, h, frames in rows:
        info = probe(path)
        assert (info.num_frames, info.width, info.height) == (frames, w, h), path
        assert info.fps == pytest.approx(fps, abs=0.01), path


@needs_shared
@pytest.mark.parametrize(
    "rel",
    [
        "ucf101-sample/UCF-101/Diving/v_Diving_g01_c01.avi",  # plain Xvid: seekable by timestamp
        "ucf101-sample/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",  # packed B-frames
        "hmdb51-sample/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi",  # packed, N-VOP placeholder packet
        "hmdb51-sample/golf/Golf_Tips_-_Hit_The_Driver_300__Yards__golf_f_nm_np1_fr_med_0.avi",
    ],
)
def test_frame_ranges_equal_a_full_decode(rel):
    path = os.path.join(SHARED_DATA, rel)
    info = probe(path)
    full = read_frames(path, info=info)
    assert full.shape == (info.num_frames, info.height, info.width, 3) and full.dtype == np.uint8
    n = info.num_frames
    for start in sorted({0, 1, 2, 11, 12, 13, n // 2, n - 17, n - 16}):
        np.testing.assert_array_equal(read_frames(path, start, 16, info=info), full[start : start + 16])
    idx = np.array([5, 5, n - 1, 0, 17])
    np.testing.assert_array_equal(read_indices(path, idx, info=info), full[idx])


@needs_shared
def test_seekable_streams_really_seek():
    """The timestamp path (not the decode-from-start fallback) is what serves plain Xvid AVIs."""
    for path in glob.glob(os.path.join(UCF_SAMPLE, "Diving", "*.avi")):
        info = probe(path)
        assert info.seekable
        container, stream = _open(path)
        with container:
            frames = _decode_by_seek(container, stream, info.pts, info.num_frames - 20, info.num_frames - 4, None)
        assert frames is not None and len(frames) == 16
    assert not probe(glob.glob(os.path.join(HMDB_SAMPLE, "wave", "*.avi"))[0]).seekable


def test_resize_while_decoding(make_video):
    path = make_video(frames=20, h=32, w=48)
    out = read_frames(path, 3, 5, size=(24, 40))
    assert out.shape == (5, 24, 40, 3)


@pytest.mark.parametrize("codec,name", [("mpeg4", "a.avi"), ("libx264", "b.mp4")])
def test_written_video_round_trip(make_video, codec, name):
    path = make_video(name=name, frames=40, codec=codec)
    info = probe(path)
    assert info.num_frames == 40 and (info.width, info.height) == (48, 32)
    full = read_frames(path, info=info)
    # bright bar position encodes the frame number: decoded order is the written order
    bar = full[:, 16].astype(int).sum(-1).argmax(-1)
    np.testing.assert_array_equal(bar // 3, np.arange(40) % 16)
    for start in (0, 9, 24):
        np.testing.assert_array_equal(read_frames(path, start, 16, info=info), full[start : start + 16])


def test_bad_inputs_raise_one_error_naming_the_file(tmp_path, make_video):
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    text = tmp_path / "notes.avi"
    text.write_text("this is not a video\n" * 50)
    good = make_video(frames=60)
    truncated = tmp_path / "truncated.avi"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 3])
    cases = {
        str(tmp_path / "missing.avi"): "not found",
        str(empty): "empty",
        str(text): "not a readable video",
        str(tmp_path): "folder",
    }
    for path, words in cases.items():
        with pytest.raises(VideoError) as e:
            probe(path)
        assert path in str(e.value) and words in str(e.value) and "\n" not in str(e.value)
    # A file cut short still opens and reads up to the cut: its header gives it away.
    with pytest.raises(VideoError, match=r"truncated: its header declares 60 frames, only \d+ are there") as e:
        probe(truncated)
    assert str(e.value).startswith(str(truncated))
    with pytest.raises(VideoError, match="outside"):
        read_frames(good, 50, 16)
