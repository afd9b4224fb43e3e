"""From inputs to a reviewer's folder: frames -> model -> smoothing -> masks, JSONL, overlay video, report.

Every file is written under a temporary name and renamed when complete, so a crash never leaves a half-written
output. Bad frames or files are skipped, listed in ``errors.jsonl`` and reported; the rest is still processed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import UserError
from core.files import atomic_write, write_image_atomic
from data.deid import Redactor, TextDetector, pseudonym
from data.io import IMAGE_EXTS, VIDEO_EXTS, list_images, prob_to_uint8, read_image, require_input
from data.quality import ANALYSIS_SIZE, analysis_view, frame_quality
from data.scope import field_of_view
from data.video import Frame, VideoWriter, probe, read_frames
from models.card import ModelCard
from models.predictor import Predictor
from review.describe import clean_mask, lesions
from review.keyframes import KeyFrames
from review.options import ReviewOptions
from review.overlay import render_overlay
from review.smoothing import TemporalSmoother
from review.stream import OrderedWorker, prefetch
from review.summary import finish, head_caption, informative_frame, passed_heads, summary_row


def head_estimates(
    card: ModelCard, probs: dict[str, np.ndarray], *, passed: Collection[str], research_heads: bool
) -> dict[str, dict[str, Any]]:
    """One informative frame's estimates: ``heads`` for the heads the display gate passed (``passed``), and with
    ``research_heads`` a ``research_only`` entry for the others, which are otherwise dropped here, before any output
    can see them."""
    out: dict[str, dict[str, Any]] = {"heads": {}, **({"research_only": {}} if research_heads else {})}
    for h, p in probs.items():
        if h not in passed and not research_heads:
            continue
        classes = card.heads[h].classes
        k = int(np.argmax(p))
        est = {
            "estimate": classes[k],
            "confidence": round(float(p[k]), 4),
            "probs": {c: round(float(v), 4) for c, v in zip(classes, p)},
        }
        if h in passed:
            out["heads"][h] = est | {"clinically_validated": True}  # the old field, kept; refused heads are absent
        else:
            out["research_only"][h] = est
    return out


def scale_lesions(found: list[dict[str, Any]], sx: float, sy: float) -> list[dict[str, Any]]:
    """Lesions measured on the model's S x S grid -> the frame's pixel coordinates (boxes, areas, contours)."""
    for d in found:
        x, y, w, h = d["bbox"]
        d["bbox"] = [round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))]
        d["area_px"] = int(round(d["area_px"] * sx * sy))
        d["contour"] = [[round(px * sx), round(py * sy)] for px, py in d["contour"]]
    return found


def frame_record(
    name: str,
    f: Frame,
    prob: np.ndarray,
    mask: np.ndarray,
    area: np.ndarray,
    found: list[dict[str, Any]],
    est: dict[str, dict[str, Any]],
    quality: dict[str, Any],
) -> dict[str, Any]:
    """One predictions.jsonl line (prob, mask, area at any one resolution; ``found`` in frame pixels; ``est`` from
    head_estimates: its ``heads`` and, with review.research_heads, ``research_only``)."""
    return {
        "name": name,
        "index": f.index,
        **({"time": round(f.time, 4)} if f.time is not None else {}),  # still images have no time
        "lesion_probability": round(float(prob.max()) if prob.size else 0.0, 4),
        "area_fraction": round(float(mask.sum()) / max(1, int(area.sum())), 5),
        "lesions": found,
        **est,
        "quality": quality,
        "informative": informative_frame(found=found, quality=quality),
    }


def measure_frame(
    f: Frame,
    prob: np.ndarray,
    head_probs: dict[str, np.ndarray],
    area: np.ndarray,
    *,
    name: str,
    card: ModelCard,
    passed: Collection[str],
    opts: ReviewOptions,
    analysis_image: np.ndarray,
    quality_area: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Everything both video paths and the image path measure on one frame, at the resolution of ``prob`` (the
    frame's, or the model's grid; lesions are reported in frame pixels either way): the cleaned mask, lesions,
    head estimates, quality (of ``analysis_image`` inside ``quality_area``: data/quality.py's grid, the same for every
    path) -> (predictions.jsonl record, mask, overlay lines of the heads the display gate passed, ``passed``).
    Heads are estimated on informative frames only: on a frame without a lesion in view (or too blurry or bright to
    grade one) a head's output is about nothing, so no record, line or plot may carry it."""
    mask = clean_mask(prob, area, threshold=opts.threshold, min_area_fraction=opts.min_area_fraction)
    h, w = f.image.shape[:2]
    found = lesions(prob, mask)
    if prob.shape != (h, w):
        found = scale_lesions(found, w / prob.shape[1], h / prob.shape[0])
    quality = frame_quality(analysis_image, quality_area)
    counted = informative_frame(found=found, quality=quality)
    est = head_estimates(card, head_probs if counted else {}, passed=passed, research_heads=opts.research_heads)
    rec = frame_record(name, f, prob, mask, area, found, est, quality)
    lines = [
        head_caption(head=hd, estimate=e["estimate"], confidence=e["confidence"]) for hd, e in est["heads"].items()
    ]
    return rec, mask, lines


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at ``size`` (width, height): the overlay's size, which the original video shares so that the report
    can lay one exactly over the other."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


def review_videos(
    stack: ExitStack, out_dir: Path, stem: str, video: dict[str, Any], opts: ReviewOptions
) -> tuple[VideoWriter | None, VideoWriter | None, tuple[int, int]]:
    """The overlay and original videos of a video run (``<stem>_overlay.mp4``, ``<stem>_original.mp4``; each None
    when its setting is off), H.264 under temporary names (data/video.py) that ``stack`` renames into place when
    it closes, or drops on an error; and the (width, height) every frame of both is fitted to."""
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

    return open_video("overlay", opts.overlay), open_video("original", opts.original_video), size


def frames_from_folder(files: list[Path], fps: float | None, errors: list[dict]) -> Iterator[Frame]:
    """The images of a folder as frames: timed at ``fps`` (frames_as_video), or untimed stills (fps None)."""
    for i, f in enumerate(files):
        try:
            yield Frame(i, None if fps is None else i / fps, read_image(f))
        except UserError as e:
            errors.append({"file": str(f), "error": str(e)})


def batched(frames: Iterable[Frame], n: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def process_sequence(
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
    """Run the model on a stream of frames. ``video`` (fps, width, height) turns on smoothing and the overlay
    video; ``names`` gives each frame's output stem (images), else ``<stem>_<index:06d>`` (video frames)."""
    if video and opts.streaming:
        return process_video_stream(
            frames,
            stem=stem,
            predictor=predictor,
            out_dir=out_dir,
            opts=opts,
            video=video,
            errors=errors,
            deid=deid,
            scrub=scrub,
        )
    smoother = TemporalSmoother(opts.smoothing if video else 1.0)
    records: list[dict[str, Any]] = []
    keep = KeyFrames(opts.key_frames)  # bounded whatever the video's (declared or unknown) length
    area = None
    cov = covariate_row(predictor, opts)
    passed = passed_heads(predictor.card)  # the display gate, asked once per input
    # ExitStack closes the videos, then the JSONL, then renames the JSONL into place; on an exception each
    # drops its partial file instead
    with ExitStack() as stack:
        jl = stack.enter_context(stack.enter_context(atomic_write(out_dir / "predictions.jsonl")).open("w"))
        writer, original, size = review_videos(stack, out_dir, stem, video, opts) if video else (None, None, None)
        for batch in batched(frames, opts.batch_size):
            preds = predictor.predict([f.image for f in batch], None if cov is None else np.repeat(cov, len(batch), 0))
            for f, p in zip(batch, preds):
                view = analysis_view(f.image)  # what quality is measured on (data/quality.py)
                if area is None or area.shape != f.image.shape[:2] or not video or f.index % opts.scope_every == 0:
                    area = field_of_view(f.image, opts.scope_mask)
                    q_area = field_of_view(view, opts.scope_mask)
                prob, heads = smoother(p.prob * area, p.heads)
                name = names[f.index] if names else f"{stem}_{f.index:06d}"
                rec, mask, lines = measure_frame(
                    f,
                    prob,
                    heads,
                    area,
                    name=name,
                    card=predictor.card,
                    passed=passed,
                    opts=opts,
                    analysis_image=view,
                    quality_area=q_area,
                )
                write_image_atomic(
                    out_dir / "masks" / f"{name}.png", mask * 255, png_level=opts.png_level, bilevel=True
                )
                if opts.write_probs:
                    write_image_atomic(out_dir / "probs" / f"{name}.png", prob_to_uint8(prob), png_level=opts.png_level)
                lesion_p = rec["lesion_probability"]
                jl.write(json.dumps(rec) + "\n")
                records.append(summary_row(rec))
                if not (opts.overlay or opts.report or opts.original_video):
                    continue
                shown = f.image if f.shown is None else f.shown  # de-identified where it was read (review.deidentify)
                ov = render_overlay(
                    shown, mask, lesion_prob=lesion_p, time_s=f.time if video else None, head_lines=lines
                )
                if video:
                    ov = fit(ov, size)
                    if writer is not None:
                        writer.write(ov)
                    if original is not None:
                        original.write(fit(shown, size))
                    keep.offer(f.time, lesion_p, f.index, ov)
                elif opts.overlay:
                    write_image_atomic(out_dir / "overlays" / f"{name}.jpg", ov)
    return finish(
        out_dir,
        stem=stem,
        records=records,
        predictor=predictor,
        video=video,
        errors=errors,
        opts=opts,
        key_frames=keep.result(),
        deid=deid.summary() if deid is not None else None,
        scrub=scrub,
    )


def covariate_row(predictor: Predictor, opts: ReviewOptions) -> np.ndarray | None:
    """1 x n covariates of the case (opts.covariates, NaN where not given) for models that read them."""
    unknown = sorted(set(opts.covariates or {}) - set(predictor.covariates))
    if unknown:
        raise UserError(f"review.covariates {unknown} are not read by this model (it reads {predictor.covariates})")
    if not predictor.covariates:
        return None
    return np.array([[float((opts.covariates or {}).get(c, np.nan)) for c in predictor.covariates]], np.float32)


def process_video_stream(
    frames: Iterable[Frame],
    *,
    stem: str,
    predictor: Predictor,
    out_dir: Path,
    opts: ReviewOptions,
    video: dict[str, Any],
    errors: list[dict],
    deid: Redactor | None = None,
    scrub: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The video path with its stages overlapping (review/stream.py): frames are decoded ahead in one thread; the
    model and everything measured on the model's S x S grid (field of view, smoothing, specks, lesions, quality,
    heads) run in this thread; full resolution is touched once per frame, behind, in a render thread (one resize
    of the probability map, the mask, the overlay blend, H.264 encoding) and a PNG thread. Same files and fields
    as process_sequence; its masks agree with the serial path's except at the field-of-view edge (Dice >= 0.99,
    tests/test_video.py)."""
    s = predictor.size
    smoother = TemporalSmoother(opts.smoothing)
    records: list[dict[str, Any]] = []
    keep = KeyFrames(opts.key_frames)
    cov = covariate_row(predictor, opts)
    passed = passed_heads(predictor.card)  # the display gate, asked once per input
    area = None
    with ExitStack() as stack:  # exits in reverse: render drains, then PNGs, then the video and the JSONL close
        jl = stack.enter_context(stack.enter_context(atomic_write(out_dir / "predictions.jsonl")).open("w"))
        writer, original, size = review_videos(stack, out_dir, stem, video, opts)
        pngs = stack.enter_context(OrderedWorker(opts.queue_depth, "endolift-png"))
        render = stack.enter_context(OrderedWorker(opts.queue_depth, "endolift-render"))

        def draw(f: Frame, prob_s: np.ndarray, area_s: np.ndarray, name: str, lesion_p: float, lines: list[str]):
            h, w = f.image.shape[:2]
            prob = cv2.resize(prob_s, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = (prob >= opts.threshold).astype(np.uint8)
            pngs.submit(
                write_image_atomic,
                out_dir / "masks" / f"{name}.png",
                mask * 255,
                png_level=opts.png_level,
                bilevel=True,
            )
            if opts.write_probs:
                pngs.submit(
                    write_image_atomic,
                    out_dir / "probs" / f"{name}.png",
                    prob_to_uint8(prob if opts.video_probs_at == "input" else prob_s),
                    png_level=opts.png_level,
                )
            if not (opts.overlay or opts.report or opts.original_video):
                return
            shown = f.image if f.shown is None else f.shown  # de-identified in the decode thread (review.deidentify)
            ov = fit(render_overlay(shown, mask, lesion_prob=lesion_p, time_s=f.time, head_lines=lines), size)
            if writer is not None:
                writer.write(ov)
            if original is not None:
                original.write(fit(shown, size))
            keep.offer(f.time, lesion_p, f.index, ov)

        def with_small(items: Iterable[Frame]) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:  # decode thread
            for f in items:  # the model's input, and the frame quality is measured on (data/quality.py)
                small = cv2.resize(f.image, (s, s), interpolation=cv2.INTER_AREA)
                yield f, small, small if s == ANALYSIS_SIZE else analysis_view(f.image)

        def model_stage(items: Iterable[tuple[Frame, np.ndarray, np.ndarray]]) -> Iterator[list[tuple]]:
            for triples in batched(items, opts.batch_size):  # runs in the model thread, a batch ahead of this one
                batch = [f for f, _, _ in triples]
                preds = predictor.predict(
                    [f.image for f in batch],
                    None if cov is None else np.repeat(cov, len(batch), 0),
                    full_size=False,
                    resized=[small for _, small, _ in triples],
                )
                yield list(zip(batch, preds, [q for _, _, q in triples]))

        for done in prefetch(model_stage(prefetch(with_small(frames), 2 * opts.batch_size)), 1):
            for f, p, analysis in done:
                if area is None or f.index % opts.scope_every == 0:
                    area = field_of_view(p.resized, opts.scope_mask)
                    q_area = area if analysis is p.resized else field_of_view(analysis, opts.scope_mask)
                prob_s, heads = smoother(p.prob * area, p.heads)
                name = f"{stem}_{f.index:06d}"
                rec, mask_s, lines = measure_frame(
                    f,
                    prob_s,
                    heads,
                    area,
                    name=name,
                    card=predictor.card,
                    passed=passed,
                    opts=opts,
                    analysis_image=analysis,
                    quality_area=q_area,
                )
                # specks the mask dropped must not come back when the map is resized to the frame
                prob_s = np.where((mask_s > 0) | (prob_s < opts.threshold), prob_s, 0.0).astype(np.float32)
                jl.write(json.dumps(rec) + "\n")
                records.append(summary_row(rec))
                render.submit(draw, f, prob_s, area, name, rec["lesion_probability"], lines)
    return finish(
        out_dir,
        stem=stem,
        records=records,
        predictor=predictor,
        video=video,
        errors=errors,
        opts=opts,
        key_frames=keep.result(),
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


def process_input(
    path: Path, *, predictor: Predictor, out_dir: Path, opts: ReviewOptions, frames_as_video: bool = False
) -> dict[str, Any]:
    """One input: an image, a folder of images (or of frames, with frames_as_video), or a video file. With
    review.deidentify each frame is de-identified as it is read (data/deid.py): the model reads the frame, every
    picture written (overlay, original, key frames, the report's) is drawn from the de-identified one; with
    review.anonymise_names the outputs are named by pseudonyms."""
    errors: list[dict] = []
    require_input(path)
    if path.is_dir():
        files = list(list_images(path).values())
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
        stem, stems, scrub = input_names(path, files, opts)
        if frames_as_video:
            first = read_image(files[0])
            video = {
                "fps": opts.frames_fps,
                "width": first.shape[1],
                "height": first.shape[0],
                "duration": len(files) / opts.frames_fps,
            }
            deid = redactor_for(opts, fps=opts.frames_fps)
            frames = frames_from_folder(files, opts.frames_fps, errors)
            return process_sequence(
                deid.frames(frames) if deid else frames,
                stem=stem,
                names=None,
                predictor=predictor,
                out_dir=out_dir,
                opts=opts,
                video=video,
                errors=errors,
                deid=deid,
                scrub=scrub,
            )
        deid = redactor_for(opts, fps=None)
        frames = frames_from_folder(files, None, errors)
        return process_sequence(
            deid.frames(frames) if deid else frames,
            stem=stem,
            names=stems,
            predictor=predictor,
            out_dir=out_dir,
            opts=opts,
            video=None,
            errors=errors,
            deid=deid,
            scrub=scrub,
        )
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
        deid = redactor_for(opts, fps=info.fps)
        frames = read_frames(path, errors=errors)
        return process_sequence(
            deid.frames(frames) if deid else frames,
            stem=stem,
            names=None,
            predictor=predictor,
            out_dir=out_dir,
            opts=opts,
            video=video,
            errors=errors,
            deid=deid,
            scrub=scrub,
        )
    if suffix in IMAGE_EXTS:  # read first: an unreadable image stops here, with nothing written
        frame = Frame(0, None, read_image(path))
        stem, _, scrub = input_names(path, None, opts)
        deid = redactor_for(opts, fps=None)
        return process_sequence(
            deid.frames([frame]) if deid else iter([frame]),
            stem=stem,
            names=[stem],
            predictor=predictor,
            out_dir=out_dir,
            opts=opts,
            video=None,
            errors=errors,
            deid=deid,
            scrub=scrub,
        )
    raise UserError(
        f"unsupported input type: {path} (images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})"
    )
