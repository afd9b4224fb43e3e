"""Peak resident memory of infer.py on a short and a long 1080p video (the streaming path keeps it flat).

python benchmarks/video_memory.py [--fps 5] [--short-s 30] [--long-s 600]
Writes two synthetic 1920x1080 videos (moving synthetic endoscopy frames) of SHORT_S and LONG_S seconds, runs
`infer.py` on each in a child process with the README's default outputs, and prints each child's peak resident set
size (ru_maxrss from wait4) and the long/short ratio. The frame rate is lowered (default 5 frames/s) so that a
10-minute video (3000 frames) runs in minutes on 2 cores: memory grows with frames, not with seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data.synthetic import synthetic_frame  # noqa: E402
from data.video import VideoWriter  # noqa: E402


def make_video(path: Path, seconds: float, fps: float) -> int:
    rng = np.random.default_rng(0)
    base = [cv2.resize(synthetic_frame(rng, (270, 480))["image"], (1920, 1080)) for _ in range(8)]
    n = int(seconds * fps)
    with VideoWriter(path, fps=fps, width=1920, height=1080, preset="ultrafast") as w:
        for i in range(n):
            w.write(np.roll(base[(i // 10) % len(base)], 4 * (i % 10), axis=1))
    return n


def peak_rss_mb(args: list[str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(proc.stderr.read().decode()[-2000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--short-s", type=float, default=30.0)
    ap.add_argument("--long-s", type=float, default=600.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res = {}
        for label, seconds in (("short", a.short_s), ("long", a.long_s)):
            video = tmp / f"{label}.mp4"
            n = make_video(video, seconds, a.fps)
            rss, wall = peak_rss_mb(["infer.py", f"input={video}", f"out_dir={tmp / ('out_' + label)}"])
            res[label] = rss
            print(
                f"{label:5s} {seconds:6.0f} s at {a.fps:g} frames/s ({n} frames of 1920x1080): "
                f"peak RSS {rss:7.1f} MB, {wall:6.1f} s ({n / wall:.1f} frames/s incl. start-up)"
            )
        print(f"long / short peak RSS: x{res['long'] / res['short']:.3f}")


if __name__ == "__main__":
    main()
