"""From an input to a reviewer's folder: frames -> model -> smoothing -> masks, JSONL, overlay video, report.

Every file is written under a temporary name and renamed when complete, so a crash never leaves a half-written
output. Bad frames or files are skipped, listed in ``errors.jsonl`` and reported; the rest is still processed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import atomic_write
from data.deid import Redactor, pseudonym
from data.io import IMAGE_EXTS, VIDEO_EXTS, list_images, read_image, require_input
from data.text_detection import TextDetector
from data.video import Frame, probe, read_frames
from models.predictor import Predictor
from review.keyframes import KeyFrames
from review.measure import covariate_row
from review.options import ReviewOptions
from review.stages import FrameMeasurer, FrameWriter, open_review_videos, predict_batches, with_model_inputs
from review.stream import InlineWorker, OrderedWorker, in_order, prefetch
from review.summary import summary_row
from review.summary_files import write_summary_and_report


def review_frames(
    frames: Iterable[Frame],
    *,
    stem: str,
    names: list[str] | None,
    predictor: Predictor,
    out_dir: Path,
    opts: ReviewOptions,
    video: dict[str, Any] | None,
    errors: list[dict],
    deid: Redactor | None = None,
    scrub: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """Run the stages (review/stages.py) over a stream of frames and write the input's files; returns its summary.
    ``video`` (fps, width, height) turns on smoothing, measuring on the model's grid and the overlay video;
    ``names`` gives each frame's output stem (images), else ``<stem>_<index:06d>`` (video frames).

    A video's stages overlap (review.streaming, the default): frames are decoded ahead in one thread, the model
    runs a batch ahead in another, the measurements run in this one and each frame's files are written behind, in
    a writing thread and a PNG thread. Otherwise (review.streaming=false, and still images) every stage runs here,
    in turn; the files are the same."""
    threaded = video is not None and opts.streaming
    ahead = prefetch if threaded else in_order

    def worker(name: str) -> OrderedWorker | InlineWorker:
        return OrderedWorker(opts.queue_depth, name) if threaded else InlineWorker()

    covariates = covariate_row(predictor, opts)
    measure = FrameMeasurer(stem=stem, names=names, card=predictor.card, opts=opts, video=video is not None)
    records: list[dict[str, Any]] = []
    key_frames = KeyFrames(opts.key_frames)  # bounded whatever the video's (declared or unknown) length
    # ExitStack exits in reverse: the writing stage drains, then the PNGs, then the videos and the JSONL close and
    # are renamed into place; on an exception each drops its partial file instead
    with ExitStack() as stack:
        jsonl = stack.enter_context(stack.enter_context(atomic_write(out_dir / "predictions.jsonl")).open("w"))
        videos = open_review_videos(stack, out_dir, stem, video, opts) if video else None
        pngs = stack.enter_context(worker("endolift-png"))
        writing = stack.enter_context(worker("endolift-render"))
        write_frame = FrameWriter(out_dir=out_dir, opts=opts, pngs=pngs, videos=videos, key_frames=key_frames)
        decoded = ahead(with_model_inputs(frames, predictor.size), 2 * opts.batch_size)
        predicted = predict_batches(
            decoded,
            predictor=predictor,
            covariates=covariates,
            batch_size=opts.batch_size,
            on_model_grid=video is not None,
        )
        for batch in ahead(predicted, 1):  # the model a batch ahead of the measurements
            for f, p, quality_view in batch:
                rec, measured = measure(f, p, quality_view)
                jsonl.write(json.dumps(rec) + "\n")
                records.append(summary_row(rec))
                writing.submit(write_frame, measured)
    return write_summary_and_report(
        out_dir,
        stem=stem,
        records=records,
        card=predictor.card,
        run=predictor.run_settings(),
        video=video,
        errors=errors,
        opts=opts,
        key_frames=key_frames.result(),
        deid=deid.summary() if deid is not None else None,
        scrub=scrub,
    )


def redactor_for(opts: ReviewOptions, *, fps: float | None) -> Redactor | None:
    """The de-identifier of one input (review.deidentify): for a video, the detector every ``deid_every_s`` seconds
    and at scene changes, with the static-overlay cue; for still images, the detector on every picture."""
    if not opts.deidentify:
        return None
    detector = TextDetector()
    if fps is None:
        return Redactor(detector, every=1, temporal=False)
    return Redactor(detector, every=max(1, int(round(opts.deid_every_s * fps))))


def input_names(path: Path, files: list[Path] | None, opts: ReviewOptions) -> tuple[str, list[str] | None, Callable]:
    """The output stem of an input and of each of its images, and the function that removes the input's names from
    a message: its own names, or with review.anonymise_names keyed pseudonyms of its content (data.deid.pseudonym)
    and every path in a message replaced by them."""
    if not opts.anonymise_names:
        stems = [f.stem for f in files] if files is not None else None
        return (path.name if path.is_dir() else path.stem), stems, (lambda text: text)
    stem = pseudonym(path)
    stems = [pseudonym(f, prefix="img") for f in files] if files is not None else None
    pairs = [(str(path), stem)] + [(str(f), s) for f, s in zip(files or [], stems or [])]
    pairs += [(path.name, stem)] + [(f.name, s) for f, s in zip(files or [], stems or [])]

    def scrub(text: str) -> str:
        for raw, alias in sorted(pairs, key=lambda p: -len(p[0])):
            text = text.replace(raw, alias)
        return text

    return stem, stems, scrub


def frames_from_folder(files: list[Path], fps: float | None, errors: list[dict]) -> Iterable[Frame]:
    """The images of a folder as frames: timed at ``fps`` (frames_as_video), or untimed stills (fps None)."""
    for i, f in enumerate(files):
        try:
            yield Frame(i, None if fps is None else i / fps, read_image(f))
        except UserError as e:
            errors.append({"file": str(f), "error": str(e)})


@dataclass
class OpenedInput:
    """An input made ready to review: its frames, as they will be read, and how its outputs are named."""

    frames: Iterable[Frame]
    stem: str
    names: list[str] | None  # each frame's output stem (still images); None: <stem>_<index:06d>
    video: dict[str, Any] | None  # fps, width, height, duration (and declared_frames): a video, or frames as one
    scrub: Callable[[str], str]  # removes the input's names from a message (review.anonymise_names)


def open_input(path: Path, *, opts: ReviewOptions, frames_as_video: bool, errors: list[dict]) -> OpenedInput:
    """An image, a folder of images (or of frames, with frames_as_video), or a video file, checked as far as can be
    before anything is written: a folder without images, an unreadable image or video stops here."""
    if path.is_dir():
        files = list(list_images(path).values())
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
        stem, stems, scrub = input_names(path, files, opts)
        if not frames_as_video:
            return OpenedInput(frames_from_folder(files, None, errors), stem, stems, None, scrub)
        first = read_image(files[0])
        fps = opts.frames_fps
        video = {"fps": fps, "width": first.shape[1], "height": first.shape[0], "duration": len(files) / fps}
        return OpenedInput(frames_from_folder(files, fps, errors), stem, None, video, scrub)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTS:
        info = probe(path)
        video = {
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "duration": info.n_frames / info.fps if info.n_frames else None,  # set from the frames read
            "declared_frames": info.n_frames,
        }
        stem, _, scrub = input_names(path, None, opts)
        return OpenedInput(read_frames(path, errors=errors), stem, None, video, scrub)
    if suffix in IMAGE_EXTS:  # read first: an unreadable image stops here, with nothing written
        frame = Frame(0, None, read_image(path))
        stem, _, scrub = input_names(path, None, opts)
        return OpenedInput([frame], stem, [stem], None, scrub)
    raise UserError(
        f"unsupported input type: {path} (images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})"
    )


def process_input(
    path: Path, *, predictor: Predictor, out_dir: Path, opts: ReviewOptions, frames_as_video: bool = False
) -> dict[str, Any]:
    """One input into ``out_dir``; returns its summary. With review.deidentify each frame is de-identified as it is
    read (data/deid.py): the model reads the frame, every picture written (overlay, original, key frames, the
    report's) is drawn from the de-identified one; with review.anonymise_names the outputs are named by pseudonyms."""
    errors: list[dict] = []
    require_input(path)
    opened = open_input(path, opts=opts, frames_as_video=frames_as_video, errors=errors)
    deid = redactor_for(opts, fps=opened.video["fps"] if opened.video else None)
    return review_frames(
        deid.frames(opened.frames) if deid else opened.frames,
        stem=opened.stem,
        names=opened.names,
        predictor=predictor,
        out_dir=out_dir,
        opts=opts,
        video=opened.video,
        errors=errors,
        deid=deid,
        scrub=opened.scrub,
    )
