"""Video in and out with PyAV: reading is a generator, writing is a context manager
(docs/ARCHITECTURE.md, house rule 7).

OpenCV's wheel cannot write H.264; PyAV encodes with libx264 so overlays play in browsers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from core.errors import UserError
from core.files import announce_output, record_output


@dataclass
class Frame:
    index: int  # 0-based decode order
    time: float | None  # presentation time in seconds (the stream's timestamps, else index / fps); None: a still
    image: np.ndarray  # H x W x 3 uint8 RGB
    shown: np.ndarray | None = None  # the picture to write instead (de-identified: data.deid), when it differs


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    n_frames: int  # as the container declares it (0 when unknown)


def ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's reason in words ('Invalid data found when processing input'), without its raw error number."""
    reason = getattr(e, "strerror", None) or str(e)
    return str(reason).rstrip(".")


def probe(path: str | Path) -> VideoInfo:
    """Open a video and read its stream header; UserError if it is not a decodable video."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video not found: {path}")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"no video stream in {path}")
            s = c.streams.video[0]
            fps = float(s.average_rate or s.guessed_rate or 25)
            return VideoInfo(fps=fps, width=s.codec_context.width, height=s.codec_context.height, n_frames=s.frames)
    except av.error.FFmpegError as e:
        raise UserError(
            f"cannot open video {path}: {ffmpeg_reason(e).lower()} (is it a complete mp4/avi/mov/mkv/webm file?)"
        ) from None


def read_frames(path: str | Path, errors: list[dict[str, Any]] | None = None) -> Iterator[Frame]:
    """Yield decoded frames in order. Damaged data does not stop the video: a packet that cannot be decoded is
    skipped and decoding goes on with the next (a corrupt middle), and the frames lost are counted, from the
    declared frame count and the gaps in the timestamps. What was lost is appended to ``errors`` as one
    {"file", "error", "frames_lost"} entry (when given; else raised as a UserError once the decodable frames are
    out), so the decodable frames are still processed and the loss is reported. Frames whose timestamp goes back
    (the decoder's output after damage) are dropped and counted as lost."""
    info = probe(path)
    index, bad_packets, gap_lost, damage, stopped = 0, 0, 0, [], None
    last_t = None
    step = 1.0 / info.fps
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_count = 1  # torch already uses every core; decoder threads would only contend
            packets = c.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:  # the container itself is unreadable from here on
                    stopped = ffmpeg_reason(e)
                    break
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError:
                    bad_packets += 1
                    damage.append(last_t if last_t is not None else 0.0)
                    continue
                for frame in decoded:
                    t = float(frame.pts * stream.time_base) if frame.pts is not None else index * step
                    if last_t is not None and t <= last_t:
                        gap_lost += 1  # out of order after damage: not a frame of the video's time line
                        continue
                    if last_t is not None and t - last_t > 1.5 * step:
                        gap_lost += max(0, round((t - last_t) / step) - 1)
                        damage.append(last_t)
                    last_t = t
                    yield Frame(index, t, frame.to_ndarray(format="rgb24"))
                    index += 1
    except av.error.FFmpegError as e:
        stopped = ffmpeg_reason(e)
    declared = info.n_frames
    lost = max(declared - index, 0) if declared else gap_lost
    if stopped is not None:
        msg = f"{path}: decoding stopped after {index} frames ({stopped.lower()}); the rest of the file is unreadable"
    elif gap_lost:  # frames missing inside the time line: a damaged middle
        where = f" (damage from {min(damage):.2f} s)" if damage else ""
        of = f"{lost} of {declared}" if declared else f"about {lost}"
        msg = (
            f"{path}: {of} frames could not be decoded{where}: the file is damaged; the {index} decodable frames "
            "were processed"
        )
    elif (declared and index < declared) or bad_packets:  # a cut-off file: FFmpeg stops quietly, or on bad data
        of = f" of {declared} declared" if declared else ""
        msg = (
            f"{path}: decoding stopped after {index}{of} frames; the file looks truncated "
            "(the decodable frames were processed)"
        )
    else:
        return
    _report(path, msg, errors, lost)


def _report(path: str | Path, msg: str, errors: list[dict[str, Any]] | None, lost: int | None = None) -> None:
    if errors is None:
        raise UserError(msg)
    errors.append({"file": str(path), "error": msg, **({"frames_lost": int(lost)} if lost is not None else {})})


class VideoWriter:
    """H.264 (libx264, yuv420p) mp4 writer. Frames are written to ``PATH.partial.mp4`` and renamed on a clean
    exit, so an interrupted run never leaves a half-written file under the final name.

    with VideoWriter(path, fps=25, width=W, height=H) as w: w.write(rgb)
    """

    def __init__(
        self, path: str | Path, *, fps: float, width: int, height: int, crf: int = 23, preset: str = "veryfast"
    ) -> None:
        self.path = Path(path)
        # the pid keeps two processes writing the same output from sharing a temp file
        self.tmp = self.path.with_name(f"{self.path.stem}.partial-{os.getpid()}.mp4")
        self.fps, self.crf, self.preset = fps, crf, preset
        self.width, self.height = width - width % 2, height - height % 2  # yuv420p needs even sides
        self._container = None
        self.frames_written = 0

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # faststart moves the index (moov) to the front when the file is closed, so browsers start playing at once.
        # It does not make a cut-off file decodable (the index is written last): that is why frames go to a
        # temporary name and only a closed, complete file is renamed into place
        self._container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(self.fps).limit_denominator(1001)
        self._stream = self._container.add_stream("libx264", rate=rate)
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(self.crf), "preset": self.preset, "threads": "1"}
        return self

    def write(self, image: np.ndarray) -> None:
        """image: H x W x 3 uint8 RGB at the writer's size (odd sides are cropped by one pixel)."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
        if exc_type is None and self.frames_written > 0:
            announce_output(self.path)
            self.tmp.replace(self.path)
            record_output(self.path)
        else:
            self.tmp.unlink(missing_ok=True)
