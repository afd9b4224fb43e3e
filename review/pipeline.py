"""From inputs to a reviewer's folder: frames -> model -> smoothing -> masks, JSONL, overlay video, report.

Every file is written under a temporary name and renamed when complete, so a crash never leaves a half-written
output. Bad frames or files are skipped, listed in ``errors.jsonl`` and reported; the rest is still processed.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from data.errors import UserError
from data.io import IMAGE_EXTS, VIDEO_EXTS, atomic_write, list_images, prob_to_uint8, read_image, write_image_atomic
from data.quality import frame_quality
from data.scope import content_area, deidentify
from data.video import Frame, VideoWriter, probe, read_frames
from models.card import ModelCard
from models.heads import aggregate_case
from models.predictor import Predictor
from review.describe import clean_mask, lesions
from review.keyframes import KeyFrames
from review.overlay import render_overlay
from review.smoothing import TemporalSmoother


@dataclass
class ReviewOptions:
    batch_size: int = 8
    threshold: float = 0.5
    smoothing: float = 0.6            # EMA weight of the newest frame in videos; 1.0 = off
    min_area_fraction: float = 0.002  # drop predicted specks smaller than this fraction of the field of view
    scope_mask: bool = True           # ignore predictions outside the endoscope's field of view
    scope_every: int = 30             # re-detect the field of view every N video frames
    deidentify: bool = False          # blur outside the field of view in every written image/video
    overlay: bool = True
    write_probs: bool = True
    report: bool = True
    frames_fps: float = 25.0          # frame rate given to a folder of frames treated as a video
    crf: int = 23
    key_frames: int = 6
    overlay_size: tuple[int, int] | list[int] | None = None  # [width, height] of the overlay video; None = input
    min_informative_frames: int = 3   # a video's head estimate abstains with fewer informative frames ...
    abstain_below: float = 0.6        # ... or when its aggregated confidence is below this
    covariates: dict[str, float] | None = None  # the case's clinical covariates (heads that read them); None = unknown


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def head_estimates(card: ModelCard, probs: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    out = {}
    for h, p in probs.items():
        classes = card.heads[h].classes
        k = int(np.argmax(p))
        out[h] = {"estimate": classes[k], "confidence": round(float(p[k]), 4),
                  "probs": {c: round(float(v), 4) for c, v in zip(classes, p)},
                  "clinically_validated": card.is_clinical(h)}
    return out


def frames_from_folder(files: list[Path], fps: float, errors: list[dict]) -> Iterator[Frame]:
    for i, f in enumerate(files):
        try:
            yield Frame(i, i / fps, read_image(f))
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


def process_sequence(frames: Iterable[Frame], *, stem: str, names: list[str] | None, predictor: Predictor,
                     out_dir: Path, opts: ReviewOptions, video: dict[str, Any] | None, errors: list[dict]
                     ) -> dict[str, Any]:
    """Run the model on a stream of frames. ``video`` (fps, width, height) turns on smoothing and the overlay
    video; ``names`` gives each frame's output stem (images), else ``<stem>_<index:06d>`` (video frames)."""
    smoother = TemporalSmoother(opts.smoothing if video else 1.0)
    records: list[dict[str, Any]] = []
    keep = KeyFrames(opts.key_frames)  # bounded whatever the video's (declared or unknown) length
    writer = None
    area = None
    # ExitStack closes the overlay writer, then the JSONL, then renames the JSONL into place; on an exception each
    # drops its partial file instead
    with ExitStack() as stack:
        jl = stack.enter_context(stack.enter_context(atomic_write(out_dir / "predictions.jsonl")).open("w"))
        cov_row = [float((opts.covariates or {}).get(c, np.nan)) for c in predictor.covariates]
        unknown = sorted(set(opts.covariates or {}) - set(predictor.covariates))
        if unknown:
            raise UserError(f"review.covariates {unknown} are not read by this model (it reads {predictor.covariates})")
        for batch in batched(frames, opts.batch_size):
            preds = predictor.predict([f.image for f in batch], np.array([cov_row] * len(batch), np.float32)
                                      if predictor.covariates else None)
            for f, p in zip(batch, preds):
                if area is None or area.shape != f.image.shape[:2] or not video or f.index % opts.scope_every == 0:
                    area = content_area(f.image) if opts.scope_mask else np.ones(f.image.shape[:2], np.uint8)
                prob, heads = smoother(p.prob * area, p.heads)
                mask = clean_mask(prob, area, threshold=opts.threshold, min_area_fraction=opts.min_area_fraction)
                name = names[f.index] if names else f"{stem}_{f.index:06d}"
                write_image_atomic(out_dir / "masks" / f"{name}.png", mask * 255)
                if opts.write_probs:
                    write_image_atomic(out_dir / "probs" / f"{name}.png", prob_to_uint8(prob))
                lesion_p = float(prob.max()) if prob.size else 0.0
                est = head_estimates(predictor.card, heads)
                quality = frame_quality(f.image, area)
                found = lesions(prob, mask)
                rec = {"name": name, "index": f.index, "time": round(f.time, 4), "lesion_probability":
                       round(lesion_p, 4), "area_fraction": round(float(mask.sum()) / max(1, int(area.sum())), 5),
                       "lesions": found, "heads": est, "quality": quality,
                       "informative": bool(found) and not (quality["blurry"] or quality["overexposed"])}
                jl.write(json.dumps(rec) + "\n")
                records.append({k: v for k, v in rec.items() if k != "lesions"} | {"n_lesions": len(rec["lesions"]),
                               "largest_px": rec["lesions"][0]["area_px"] if rec["lesions"] else 0})
                if not opts.overlay and not opts.report:
                    continue
                shown = f.image if not opts.deidentify else deidentify(f.image, area)
                lines = [f"{h}: {e['estimate']} ({e['confidence']:.2f})" for h, e in est.items()
                         if e["clinically_validated"] and found]
                ov = render_overlay(shown, mask, lesion_prob=lesion_p, time_s=f.time if video else None,
                                    head_lines=lines)
                if video and opts.overlay_size:
                    ov = cv2.resize(ov, (int(opts.overlay_size[0]), int(opts.overlay_size[1])),
                                    interpolation=cv2.INTER_AREA)
                if video:
                    if writer is None and opts.overlay:
                        writer = stack.enter_context(VideoWriter(
                            out_dir / f"{stem}_overlay.mp4", fps=video["fps"], width=ov.shape[1],
                            height=ov.shape[0], crf=opts.crf))
                    if writer is not None:
                        writer.write(ov)
                    keep.offer(f.time, lesion_p, f.index, ov)
                elif opts.overlay:
                    write_image_atomic(out_dir / "overlays" / f"{name}.jpg", ov)
    summary = summarise(records, predictor.card, video, errors, threshold=opts.threshold, opts=opts)
    with atomic_write(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    if errors:
        write_jsonl(out_dir / "errors.jsonl", errors)
    if video and opts.report and records:
        from review.report import write_report

        write_report(out_dir, stem=stem, records=records, summary=summary, card=predictor.card,
                     key_frames=keep.result(),
                     overlay=f"{stem}_overlay.mp4" if opts.overlay else None)
    return summary


def summarise(records: list[dict], card: ModelCard, video: dict | None, errors: list[dict], *, threshold: float,
              opts: ReviewOptions | None = None) -> dict[str, Any]:
    """Case summary: frames with lesion, largest lesion, and for a video one estimate per head, aggregated over its
    informative frames (models.heads.aggregate_case: a lesion in view, not blurry or over-exposed), abstaining
    ("insufficient evidence") below ``opts.min_informative_frames`` frames or ``opts.abstain_below`` confidence."""
    opts = opts or ReviewOptions()
    with_lesion = [r for r in records if r["n_lesions"] > 0]
    largest = max(records, key=lambda r: r["largest_px"], default=None)
    heads: dict[str, Any] = {}
    for h, info in (card.heads if video else {}).items():
        classes = info.classes
        rows = [r for r in records if h in r["heads"]]
        probs = np.array([[r["heads"][h]["probs"][c] for c in classes] for r in rows]).reshape(-1, len(classes))
        agg = aggregate_case(probs, np.array([r["informative"] for r in rows], bool),
                             min_frames=opts.min_informative_frames, min_confidence=opts.abstain_below)
        heads[h] = {"estimate": None if agg["abstain"] else classes[agg["index"]],
                    "confidence": None if agg["confidence"] is None else round(agg["confidence"], 4),
                    "probs": None if agg["probs"] is None else {c: round(float(v), 4) for c, v in zip(classes,
                                                                                                    agg["probs"])},
                    "frames": agg["frames"], "abstain": agg["abstain"], "reason": agg["reason"],
                    "clinically_validated": card.is_clinical(h)}
    return {"frames": len(records), "frames_with_lesion": len(with_lesion),
            "informative_frames": sum(bool(r["informative"]) for r in records),
            "lesion_frame_fraction": round(len(with_lesion) / max(1, len(records)), 4),
            "max_lesion_probability": max((r["lesion_probability"] for r in records), default=0.0),
            "largest_lesion": {"name": largest["name"], "time": largest["time"], "area_px": largest["largest_px"]}
            if largest and largest["largest_px"] else None,
            "heads": heads, "video": video, "threshold": threshold, "errors": errors,
            "model": {"name": card.name, "date": card.date, "git_commit": card.git_commit}}


def process_input(path: Path, *, predictor: Predictor, out_dir: Path, opts: ReviewOptions,
                  frames_as_video: bool = False) -> dict[str, Any]:
    """One input: an image, a folder of images (or of frames, with frames_as_video), or a video file."""
    errors: list[dict] = []
    if not path.exists():
        raise UserError(f"input not found: {path} (give an image, a folder of images, or a video)")
    if path.is_dir():
        files = list(list_images(path).values())
        if not files:
            raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in folder {path}")
        if frames_as_video:
            first = read_image(files[0])
            video = {"fps": opts.frames_fps, "width": first.shape[1], "height": first.shape[0],
                     "duration": len(files) / opts.frames_fps}
            return process_sequence(frames_from_folder(files, opts.frames_fps, errors), stem=path.name, names=None,
                                    predictor=predictor, out_dir=out_dir, opts=opts, video=video, errors=errors)
        return process_sequence(frames_from_folder(files, 1.0, errors), stem=path.name, names=[f.stem for f in files],
                                predictor=predictor, out_dir=out_dir, opts=opts, video=None, errors=errors)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTS:
        info = probe(path)
        video = {"fps": info.fps, "width": info.width, "height": info.height,
                 "duration": info.n_frames / info.fps if info.n_frames else 60.0, "declared_frames": info.n_frames}
        return process_sequence(read_frames(path, errors=errors), stem=path.stem, names=None,
                                predictor=predictor, out_dir=out_dir, opts=opts, video=video, errors=errors)
    if suffix in IMAGE_EXTS:
        return process_sequence(frames_from_folder([path], 1.0, errors), stem=path.stem, names=[path.stem],
                                predictor=predictor, out_dir=out_dir, opts=opts, video=None, errors=errors)
    raise UserError(f"unsupported input type: {path} "
                    f"(images: {', '.join(IMAGE_EXTS)}; videos: {', '.join(VIDEO_EXTS)})")

