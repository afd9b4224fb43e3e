from __future__ import annotations

import av
import numpy as np
import pytest

from data.errors import UserError
from data.video import VideoWriter, probe, read_frames


def test_video_round_trip_keeps_count_rate_size_and_is_h264(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(15)]
    with VideoWriter(tmp_path / "v.mp4", fps=12.5, width=64, height=48) as w:
        for f in frames:
            w.write(f)
    info = probe(tmp_path / "v.mp4")
    assert (info.width, info.height, info.fps) == (64, 48, 12.5)
    got = list(read_frames(tmp_path / "v.mp4"))
    assert len(got) == 15 and got[0].image.shape == (48, 64, 3)
    assert [round(f.time, 3) for f in got[:3]] == [0.0, 0.08, 0.16]
    with av.open(str(tmp_path / "v.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_writer_leaves_no_file_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", fps=10, width=32, height=32) as w:
            w.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("crash mid-video")
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_are_cropped_to_even(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", fps=10, width=33, height=25) as w:
        w.write(np.zeros((25, 33, 3), np.uint8))
    assert (probe(tmp_path / "v.mp4").width, probe(tmp_path / "v.mp4").height) == (32, 24)


def test_unreadable_and_truncated_videos(tmp_path, synthetic_video):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(UserError, match="cannot open video"):
        probe(bad)
    data = synthetic_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    errors: list[dict] = []
    frames = list(read_frames(cut, errors=errors))
    assert 0 < len(frames) < 12  # the decodable frames still come out
    assert errors and "decoding stopped" in errors[0]["error"] and errors[0]["file"] == str(cut)


def test_key_frames_stay_bounded_whatever_the_length():
    from review.keyframes import KeyFrames

    kf = KeyFrames(6)
    peak = {137: 0.99, 612: 0.98}
    most = 0
    for i in range(1000):  # a 1000-frame, 1 frame/s video whose container declared no length
        kf.offer(float(i), peak.get(i, 0.1 + (i % 7) / 100), i, f"frame{i}")
        most = max(most, len(kf.bins))
    out = kf.result()
    assert most <= 12 and len(out) == 6
    idx = [i for _, i, _ in out]
    assert idx == sorted(idx) and 137 in idx and 612 in idx  # the best frames survive every merge
    assert idx[0] < 250 and idx[-1] > 750                     # spread over the whole video
    assert KeyFrames(0).result() == []
