"""The stages every input's frames pass through, each written once: the model's input made while decoding, the model
a batch at a time, the measurements of each frame in order (field of view, smoothing, specks, lesions, quality,
heads) and the frame's files at its own resolution (mask and probability PNGs, overlay picture or video frames, key
frames). review/pipeline.py runs them in one thread or overlapping in threads (review/stream.py); the files are the
same either way.

A video's frames are measured on the model's S x S grid and resized once, in the writing stage, to the frame's size
(a 1080p frame is touched once); a still image is measured at its own resolution."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.files import write_image_atomic
from data.io import prob_to_uint8
from data.quality import ANALYSIS_SIZE, analysis_view
from data.scope import field_of_view
from data.video import Frame, VideoWriter
from models.card import ModelCard
from models.predictor import Prediction, Predictor
from models.reliability import LOW_RELIABILITY, LOW_RELIABILITY_LINE
from review.keyframes import KeyFrames
from review.measure import measure_frame
from review.options import ReviewOptions
from review.overlay import render_overlay
from review.smoothing import TemporalSmoother
from review.stream import InlineWorker, OrderedWorker
from review.summary import passed_heads


def batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``n`` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def with_model_inputs(frames: Iterable[Frame], size: int) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:
    """The decoding stage: each frame with the model's S x S input and the view its quality is measured on
    (data/quality.py's grid: the same array when S is that grid)."""
    for f in frames:
        small = cv2.resize(f.image, (size, size), interpolation=cv2.INTER_AREA)
        yield f, small, small if size == ANALYSIS_SIZE else analysis_view(f.image)


def predict_batches(
    items: Iterable[tuple[Frame, np.ndarray, np.ndarray]],
    *,
    predictor: Predictor,
    covariates: np.ndarray | None,
    batch_size: int,
    on_model_grid: bool,
) -> Iterator[list[tuple[Frame, Prediction, np.ndarray]]]:
    """The model stage: (frame, prediction, quality view) a batch at a time; probabilities on the model's grid
    (``on_model_grid``, video frames) or at each frame's resolution (still images)."""
    for triples in batched(items, batch_size):
        frames = [f for f, _, _ in triples]
        preds = predictor.predict(
            [f.image for f in frames],
            None if covariates is None else np.repeat(covariates, len(frames), 0),
            full_size=not on_model_grid,
            resized=[small for _, small, _ in triples],
        )
        yield list(zip(frames, preds, [view for _, _, view in triples]))


@dataclass
class MeasuredFrame:
    """What the measuring stage hands to the writing stage for one frame."""

    frame: Frame
    prob: np.ndarray  # at the measuring resolution; on the model's grid with the dropped specks zeroed
    mask: np.ndarray  # the cleaned mask at the same resolution
    name: str  # the frame's output stem
    lesion_probability: float
    head_lines: list[str]  # the overlay's lines: heads the display gate passed, on informative frames only


class FrameMeasurer:
    """The measuring stage, called in frame order: the field of view, found on every still image, every
    review.scope_every video frames and whenever the frame size changes; temporal smoothing of video frames,
    restarted when the frame size changes (a scene cut); then review/measure.py's measurements, on the model's grid
    for video frames (``video``), at the frame's resolution for still images."""

    def __init__(
        self,
        *,
        stem: str,
        names: list[str] | None,
        card: ModelCard,
        opts: ReviewOptions,
        video: bool,
    ) -> None:
        self.stem, self.names, self.card, self.opts, self.video = stem, names, card, opts, video
        self.passed = passed_heads(card)  # the display gate, asked once per input
        self.fov: np.ndarray | None = None
        self.quality_fov: np.ndarray | None = None
        self.frame_size: tuple[int, ...] | None = None
        self.alpha = opts.smoothing if video else 1.0  # still images are not smoothed
        self.smoother = TemporalSmoother(self.alpha)

    def __call__(self, f: Frame, p: Prediction, quality_view: np.ndarray) -> tuple[dict[str, Any], MeasuredFrame]:
        """(predictions.jsonl record, what the writing stage needs) of one frame."""
        opts = self.opts
        size = f.image.shape[:2]
        if self.fov is None or size != self.frame_size or not self.video or f.index % opts.scope_every == 0:
            seen = p.resized if self.video else f.image  # what the probabilities are measured on
            self.fov = field_of_view(seen, opts.scope_mask)
            self.quality_fov = self.fov if quality_view is seen else field_of_view(quality_view, opts.scope_mask)
        if size != self.frame_size:
            self.smoother = TemporalSmoother(self.alpha)
            self.frame_size = size
        prob, heads = self.smoother(p.prob * self.fov, p.heads)
        name = self.names[f.index] if self.names else f"{self.stem}_{f.index:06d}"
        rec, mask, lines = measure_frame(
            f,
            prob,
            heads,
            self.fov,
            name=name,
            card=self.card,
            passed=self.passed,
            opts=opts,
            analysis_image=quality_view,
            quality_fov=self.quality_fov,
        )
        if p.reliability is not None:  # Predictor(reliability=True): the model's views of the frame compared
            rec["reliability"] = round(p.reliability, 4)
            rec["low_reliability"] = rec["reliability"] < LOW_RELIABILITY  # the written value: summary recounts it
            if rec["low_reliability"]:
                lines = [*lines, LOW_RELIABILITY_LINE]
        if self.video:  # specks the mask dropped must not come back when the map is resized to the frame
            prob = np.where((mask > 0) | (prob < opts.threshold), prob, 0.0).astype(np.float32)
        return rec, MeasuredFrame(f, prob, mask, name, rec["lesion_probability"], lines)


def fit_to_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height): the overlay's size, which the original video shares so that the report
    can lay one exactly over the other."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


@dataclass
class ReviewVideos:
    """The overlay and original videos of a video input (each None when its setting is off) and the (width,
    height) every frame of both is fitted to."""

    overlay: VideoWriter | None
    original: VideoWriter | None
    size: tuple[int, int]


def open_review_videos(
    stack: ExitStack, out_dir: Path, stem: str, video: dict[str, Any], opts: ReviewOptions
) -> ReviewVideos:
    """``<stem>_overlay.mp4`` and ``<stem>_original.mp4``, H.264 under temporary names (data/video.py) that ``stack``
    renames into place when it closes, or drops on an error."""
    size = (
        (int(opts.overlay_size[0]), int(opts.overlay_size[1]))
        if opts.overlay_size
        else (int(video["width"]), int(video["height"]))
    )

    def open_video(kind: str, wanted: bool) -> VideoWriter | None:
        if not wanted:
            return None
        path, (w, h) = out_dir / f"{stem}_{kind}.mp4", size
        return stack.enter_context(
            VideoWriter(path, fps=video["fps"], width=w, height=h, crf=opts.crf, preset=opts.x264_preset)
        )

    return ReviewVideos(open_video("overlay", opts.overlay), open_video("original", opts.original_video), size)


class FrameWriter:
    """The writing stage, called in frame order, at each frame's own resolution: a video frame's map (measured on
    the model's grid) resized once, the mask and probability PNGs (handed to ``pngs``), the overlay (a still image's
    picture, or a frame of the overlay video) and the original video's frame, and the offer of a key frame.
    ``videos``: a video input's writers, None for still images."""

    def __init__(
        self,
        *,
        out_dir: Path,
        opts: ReviewOptions,
        pngs: OrderedWorker | InlineWorker,
        videos: ReviewVideos | None,
        key_frames: KeyFrames,
    ) -> None:
        self.out_dir, self.opts, self.pngs, self.videos, self.key_frames = out_dir, opts, pngs, videos, key_frames

    def __call__(self, m: MeasuredFrame) -> None:
        opts, f = self.opts, m.frame
        prob, mask = m.prob, m.mask
        if self.videos is not None:  # measured on the model's grid
            h, w = f.image.shape[:2]
            prob = cv2.resize(m.prob, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = (prob >= opts.threshold).astype(np.uint8)
        self.pngs.submit(
            write_image_atomic,
            self.out_dir / "masks" / f"{m.name}.png",
            mask * 255,
            png_level=opts.png_level,
            bilevel=True,
        )
        if opts.write_probs:
            self.pngs.submit(
                write_image_atomic,
                self.out_dir / "probs" / f"{m.name}.png",
                prob_to_uint8(prob if opts.video_probs_at == "input" else m.prob),
                png_level=opts.png_level,
            )
        if not (opts.overlay or opts.report or opts.original_video):
            return
        shown = f.image if f.shown is None else f.shown  # de-identified where it was read (review.deidentify)
        time_s = None if self.videos is None else f.time
        ov = render_overlay(shown, mask, lesion_prob=m.lesion_probability, time_s=time_s, head_lines=m.head_lines)
        if self.videos is None:  # a still image
            if opts.overlay:
                write_image_atomic(self.out_dir / "overlays" / f"{m.name}.jpg", ov)
            return
        ov = fit_to_size(ov, self.videos.size)
        if self.videos.overlay is not None:
            self.videos.overlay.write(ov)
        if self.videos.original is not None:
            self.videos.original.write(fit_to_size(shown, self.videos.size))
        self.key_frames.offer(f.time, m.lesion_probability, f.index, ov)
