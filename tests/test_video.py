from __future__ import annotations

import json

import av
import numpy as np
import pytest

from core.errors import UserError
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
    assert idx[0] < 250 and idx[-1] > 750  # spread over the whole video
    assert KeyFrames(0).result() == []


def _dice(a, b) -> float:
    import cv2 as _cv2

    x, y = _cv2.imread(str(a), _cv2.IMREAD_GRAYSCALE) > 0, _cv2.imread(str(b), _cv2.IMREAD_GRAYSCALE) > 0
    s = x.sum() + y.sum()
    return 1.0 if s == 0 else 2 * (x & y).sum() / s


def test_streaming_path_matches_the_serial_one_at_384x288_and_1080p(tmp_path):
    import cv2 as _cv2

    from data.video import VideoWriter, read_frames
    from models.predictor import Predictor
    from review.options import ReviewOptions
    from review.pipeline import process_input
    from tests.conftest import ROOT

    pred = Predictor.from_checkpoint(ROOT / "checkpoints" / "endolift_polyp_unet_mnv2", device="cpu")
    clip = ROOT / "samples" / "clinicdb_seq6.mp4"
    hd = tmp_path / "hd.mp4"
    with VideoWriter(hd, fps=8, width=1920, height=1080, crf=18) as w:
        for f in list(read_frames(clip))[:6]:
            w.write(_cv2.resize(f.image, (1920, 1080), interpolation=_cv2.INTER_CUBIC))
    for video, n in ((clip, 23), (hd, 6)):
        outs = {}
        for streaming in (False, True):
            out = tmp_path / f"{video.stem}_{streaming}"
            summary = process_input(video, predictor=pred, out_dir=out, opts=ReviewOptions(streaming=streaming))
            assert summary["frames"] == n
            outs[streaming] = out
        a, b = outs[False], outs[True]
        for sub in ("masks", "probs"):
            assert sorted(p.name for p in (a / sub).iterdir()) == sorted(p.name for p in (b / sub).iterdir())
        # key frames: as many (which frames can differ where lesion probabilities tie near 1.0)
        assert len(list((a / "keyframes").iterdir())) == len(list((b / "keyframes").iterdir()))
        assert min(_dice(p, b / "masks" / p.name) for p in (a / "masks").iterdir()) >= 0.99
        ra = [json.loads(x) for x in (a / "predictions.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (b / "predictions.jsonl").read_text().splitlines()]
        assert [r["index"] for r in rb] == list(range(n)) and all(set(x) == set(y) for x, y in zip(ra, rb))
        # a head is estimated only on informative frames (a lesion in view, sharp, not over-exposed), on either path
        assert all(r["heads"] == {} for r in ra + rb if not r["informative"])
        assert all(abs(x["area_fraction"] - y["area_fraction"]) < 0.01 for x, y in zip(ra, rb))
        # frame quality: the same grid and field of view whatever the path and the model's input size
        assert [r["quality"] for r in ra] == [r["quality"] for r in rb]
        assert (b / f"{video.stem}_overlay.mp4").is_file() and (b / "report.html").is_file()
        with av.open(str(b / f"{video.stem}_overlay.mp4")) as c:
            assert sum(1 for _ in c.decode(c.streams.video[0])) == n


def test_streaming_keeps_order_and_counts_with_tiny_queues(tmp_path, tiny_checkpoint, synthetic_video):
    from models.predictor import Predictor
    from review.options import ReviewOptions
    from review.pipeline import process_input

    pred = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    out = tmp_path / "o"
    summary = process_input(
        synthetic_video, predictor=pred, out_dir=out, opts=ReviewOptions(batch_size=5, queue_depth=1, threshold=0.001)
    )
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert summary["frames"] == 12 and [r["index"] for r in rows] == list(range(12))
    assert len(list((out / "masks").iterdir())) == 12 and not list(out.rglob("*.partial*"))
    with av.open(str(out / "clip_overlay.mp4")) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(c.streams.video[0])]
    assert len(times) == 12 and times == sorted(times)


def test_stage_workers_pass_errors_to_the_caller():
    from review.stream import OrderedWorker, prefetch

    def boom(x):
        raise RuntimeError(f"failed on {x}")

    with pytest.raises(RuntimeError, match="failed on 0"):
        with OrderedWorker(depth=1) as w:
            for i in range(5):
                w.submit(boom, i)

    def frames():
        yield 1
        raise ValueError("decoder broke")

    with pytest.raises(ValueError, match="decoder broke"):
        list(prefetch(frames(), depth=2))
    assert list(prefetch(range(50), depth=3)) == list(range(50))  # order kept
    import threading
    import time

    t0 = time.perf_counter()
    with pytest.raises(KeyError):  # the consumer fails while the producer waits on a full queue
        for _ in prefetch(iter([1, 2, 3]), depth=1):
            raise KeyError("consumer")
    assert time.perf_counter() - t0 < 2 and not any(
        t.name == "endolift-prefetch" and t.is_alive() for t in threading.enumerate()
    )


def test_a_video_run_killed_midway_leaves_no_output_under_its_final_name(tmp_path, tiny_checkpoint):
    import signal
    import subprocess
    import sys
    import time

    from data.synthetic import synthetic_frame
    from data.video import VideoWriter
    from tests.conftest import ROOT

    rng = np.random.default_rng(1)
    video = tmp_path / "long.mp4"
    frame = synthetic_frame(rng, (256, 320))["image"]
    with VideoWriter(video, fps=25, width=320, height=256) as w:
        for _ in range(600):
            w.write(frame)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "infer.py", f"input={video}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list((out / "masks").glob("*.png"))) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list((out / "masks").glob("*.png"))) < 600, "the run finished before it could be killed"
    for final in ("long_overlay.mp4", "predictions.jsonl", "summary.json", "report.html"):
        assert not (out / final).exists(), final
    import cv2 as _cv2

    for p in (out / "masks").glob("*.png"):  # every mask under its final name is complete
        assert _cv2.imread(str(p), _cv2.IMREAD_GRAYSCALE) is not None, p
    assert list(out.rglob(f"*.partial-{proc.pid}*"))  # the killed run left its temporary files ...
    short = tmp_path / "short.mp4"
    with VideoWriter(short, fps=25, width=320, height=256) as w:
        for _ in range(3):
            w.write(frame)
    from tests.test_infer import infer_in_process

    failures = infer_in_process(f"input={short}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert failures == [], failures  # exit code 0
    assert not list(out.rglob("*.partial-*")) and (out / "short_overlay.mp4").is_file()  # ... the next run removes
    # ... and so are the killed run's finished masks, journalled before they got their final names
    assert not list((out / "masks").glob("long_*")) and len(list((out / "masks").glob("short_*"))) == 3
