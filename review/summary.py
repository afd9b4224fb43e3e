"""What a finished input leaves besides its frames: summary.json (frames, lesions, segments, one estimate per head
for a video), errors.jsonl, and for a video the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from data.io import atomic_write, write_jsonl
from models.card import ModelCard
from models.heads import aggregate_case
from models.predictor import Predictor
from review.options import ReviewOptions
from review.segments import GAP_S, lesion_segments


def summary_row(rec: dict[str, Any]) -> dict[str, Any]:
    """What the summary and report keep of a frame (not the contours)."""
    return {k: v for k, v in rec.items() if k != "lesions"} | {
        "n_lesions": len(rec["lesions"]),
        "largest_px": rec["lesions"][0]["area_px"] if rec["lesions"] else 0,
        "lesion_px": sum(d["area_px"] for d in rec["lesions"]),
    }


def finish(
    out_dir: Path,
    *,
    stem: str,
    records: list[dict],
    predictor: Predictor,
    video: dict | None,
    errors: list[dict],
    opts: ReviewOptions,
    key_frames: list,
) -> dict[str, Any]:
    """summary.json, errors.jsonl and (videos) the report, once every frame is done."""
    summary = summarise(records, predictor.card, video, errors, threshold=opts.threshold, opts=opts)
    with atomic_write(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    if errors:
        write_jsonl(out_dir / "errors.jsonl", errors)
    if video and opts.report and records:
        from review.report import write_report

        write_report(
            out_dir,
            stem=stem,
            records=records,
            summary=summary,
            card=predictor.card,
            key_frames=key_frames,
            overlay=f"{stem}_overlay.mp4" if opts.overlay else None,
            original=f"{stem}_original.mp4" if opts.original_video else None,
        )
    return summary


def summarise(
    records: list[dict],
    card: ModelCard,
    video: dict | None,
    errors: list[dict],
    *,
    threshold: float,
    opts: ReviewOptions | None = None,
) -> dict[str, Any]:
    """Case summary: frames with lesion, largest lesion, and for a video one estimate per head, aggregated over its
    informative frames (models.heads.aggregate_case: a lesion in view, not blurry or over-exposed), abstaining
    ("insufficient evidence") below ``opts.min_informative_frames`` frames or ``opts.abstain_below`` confidence;
    and for a video its lesion segments (review/segments.py), the stretches in which a lesion is in view."""
    opts = opts or ReviewOptions()
    with_lesion = [r for r in records if r["n_lesions"] > 0]
    largest = max(records, key=lambda r: r["largest_px"], default=None)
    heads: dict[str, Any] = {}
    for h, info in (card.heads if video else {}).items():
        classes = info.classes
        rows = [r for r in records if h in r["heads"]]
        probs = np.array([[r["heads"][h]["probs"][c] for c in classes] for r in rows]).reshape(-1, len(classes))
        agg = aggregate_case(
            probs,
            np.array([r["informative"] for r in rows], bool),
            min_frames=opts.min_informative_frames,
            min_confidence=opts.abstain_below,
        )
        heads[h] = {
            "estimate": None if agg["abstain"] else classes[agg["index"]],
            "confidence": None if agg["confidence"] is None else round(agg["confidence"], 4),
            "probs": None if agg["probs"] is None else {c: round(float(v), 4) for c, v in zip(classes, agg["probs"])},
            "frames": agg["frames"],
            "abstain": agg["abstain"],
            "reason": agg["reason"],
            "clinically_validated": card.is_clinical(h),
        }
    return {
        "frames": len(records),
        "frames_with_lesion": len(with_lesion),
        "informative_frames": sum(bool(r["informative"]) for r in records),
        "lesion_frame_fraction": round(len(with_lesion) / max(1, len(records)), 4),
        "max_lesion_probability": max((r["lesion_probability"] for r in records), default=0.0),
        "largest_lesion": {"name": largest["name"], "time": largest["time"], "area_px": largest["largest_px"]}
        if largest and largest["largest_px"]
        else None,
        "segments": lesion_segments(records, fps=video["fps"]) if video else None,
        "segment_gap_s": GAP_S if video else None,
        "heads": heads,
        # the length read (webm/mkv often declare none; a truncated file is shorter than declared)
        "video": dict(video, duration=round(len(records) / video["fps"], 4)) if video else None,
        "threshold": threshold,
        "errors": errors,
        "model": {"name": card.name, "date": card.date, "git_commit": card.git_commit},
    }
