"""What summary.json holds (frames, lesions, segments, one estimate per head for a video) and the per-frame rules
it shares with predictions.jsonl, the overlay and the report (review/summary_files.py writes it).

Which heads reach a reader is decided by the display gate alone (models/gate.py, called through the module as
``gate.shown`` / ``gate.refusals``, so that one replacement of it, a stricter rule or a test's, reaches every
output of review/ and models/export.py alike): a head it passes is
written under ``heads``; a head it refuses is written nowhere, or with ``review.research_heads`` under
``research_only`` in predictions.jsonl and summary.json, never in the overlay or the report. A head is estimated only
on informative frames (data.quality.is_informative, review/measure.py), per frame and per video alike, and worded by
``head_caption`` in the overlay and the report alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from models import gate
from models.card import ModelCard
from models.heads import aggregate_case
from models.predictor_settings import TTA_SCALES
from models.reliability import reliability_summary
from review.options import ReviewOptions
from review.segments import GAP_S, lesion_segments


def deid_banner(deid: dict[str, Any] | None) -> str | None:
    """The warning when de-identification did not hold: text still found after redaction (None when it held or
    was off)."""
    if not deid or deid.get("passed", True):
        return None
    n, frames = deid["residual_text_frame_count"], deid["residual_text_frames"]
    shown = ", ".join(map(str, frames[:10])) + (", ..." if n > 10 else "")
    return (
        f"de-identification check failed: text was still detected after redaction on {n} of "
        f"{deid['frames_checked']} checked frames (frame {shown}); review every picture before sharing these outputs"
    )


def passed_heads(card: ModelCard) -> list[str]:
    """The card's heads whose estimates may reach a clinician (the display gate), in the card's order."""
    return [h for h in card.heads if gate.shown(card, h)]


def head_caption(*, head: str, estimate: str, confidence: float) -> str:
    """The one wording of a head's estimate, per frame (the overlay) and per video (the report), so that the two
    read alike: 'lift: adequate, confidence 0.82'."""
    return f"{head}: {estimate}, confidence {confidence:.2f}"


def summary_row(rec: dict[str, Any]) -> dict[str, Any]:
    """What the summary and report keep of a frame (not the contours)."""
    return {k: v for k, v in rec.items() if k != "lesions"} | {
        "n_lesions": len(rec["lesions"]),
        "largest_px": rec["lesions"][0]["area_px"] if rec["lesions"] else 0,
        "lesion_px": sum(d["area_px"] for d in rec["lesions"]),
    }


def summarise(
    records: list[dict],
    card: ModelCard,
    video: dict | None,
    errors: list[dict],
    *,
    threshold: float,
    opts: ReviewOptions | None = None,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Case summary: frames with lesion, largest lesion, and for a video one estimate per head, aggregated over its
    informative frames (models.heads.aggregate_case: a lesion in view, not blurry or over-exposed), abstaining
    ("insufficient evidence") below ``opts.min_informative_frames`` frames or ``opts.abstain_below`` confidence:
    under ``heads`` for the heads the display gate passes, under ``research_only`` (with the gate's reasons) for the
    others only with ``opts.research_heads``; and for a video its lesion segments (review/segments.py), the
    stretches in which a lesion is in view."""
    opts = opts or ReviewOptions()
    with_lesion = [r for r in records if r["n_lesions"] > 0]
    largest = max(records, key=lambda r: r["largest_px"], default=None)
    passed = passed_heads(card)
    heads: dict[str, Any] = {}
    research: dict[str, Any] = {}
    for h, info in (card.heads if video else {}).items():
        if h in passed:
            heads[h] = video_estimate(records, head=h, classes=info.classes, key="heads", opts=opts)
            heads[h]["clinically_validated"] = True  # kept for readers of the old field; a refused head is absent
        elif opts.research_heads:
            research[h] = video_estimate(records, head=h, classes=info.classes, key="research_only", opts=opts)
            research[h]["not_shown"] = gate.refusals(card, h)
    return {
        "frames": len(records),
        "frames_with_lesion": len(with_lesion),
        "informative_frames": sum(bool(r["informative"]) for r in records),
        "lesion_frame_fraction": round(len(with_lesion) / max(1, len(records)), 4),
        "max_lesion_probability": max((r["lesion_probability"] for r in records), default=0.0),
        # a still image has no time: only a video frame's largest lesion says when
        "largest_lesion": {
            "name": largest["name"],
            **({"time": largest["time"]} if "time" in largest else {}),
            "area_px": largest["largest_px"],
        }
        if largest and largest["largest_px"]
        else None,
        "segments": lesion_segments(records, fps=video["fps"]) if video else None,
        "segment_gap_s": GAP_S if video else None,
        "heads": heads,
        **({"research_only": research} if opts.research_heads else {}),
        # with reliability scoring on (profile=accurate): frames whose views disagree, to check by eye
        **({"reliability": rel} if (rel := reliability_summary(records)) else {}),
        # the length read (webm/mkv often declare none; a truncated file is shorter than declared)
        "video": dict(video, duration=round(len(records) / video["fps"], 4)) if video else None,
        "threshold": threshold,
        "errors": errors,
        # frames a damaged video lost (data.video.read_frames counts them); 0 for images and intact videos
        "frames_lost": sum(int(e.get("frames_lost") or 0) for e in errors),
        "model": {
            "name": card.name,
            "date": card.date,
            "git_commit": card.git_commit,
            **({"run": run, "run_line": run_line(run)} if run else {}),
        },
    }


TTA_WORDS = {  # the report's words for each tta_views (models/predictor_settings.py), "flip TTA" for h
    "hv": "flip TTA (mirrored, upside down and both)",
    "hs": f"flip and multi-scale TTA (mirrored; also at {' and '.join(f'{f}x' for f in TTA_SCALES)} the input size)",
}


def run_line(run: dict[str, Any]) -> str:
    """How the model ran, in the report's words: 'profile accurate: input 352 px (trained at 288), flip TTA,
    reliability scored'."""
    size = f"input {run['input_size']} px"
    if run.get("trained_size") and run["trained_size"] != run["input_size"]:
        size += f" (trained at {run['trained_size']})"
    tta = TTA_WORDS.get(run.get("tta_views"), "flip TTA")
    parts = [size, tta if run.get("tta") else "no TTA"]
    parts.append("reliability scored" if run.get("reliability") else "reliability not scored")
    if run.get("ensemble"):  # paths and card names: the report escapes them where it writes this line
        members = [
            f"{m.get('path') or m['name']} ({m['name']}, save {str(m.get('save_id'))[:8]})" for m in run["ensemble"]
        ]
        parts.append(f"averaged with {'; '.join(members)}")
    if run.get("backend") and run["backend"] != "torch":
        parts.append(run["backend"])
    return f"profile {run.get('profile') or 'custom'}: " + ", ".join(parts)


def video_estimate(
    records: list[dict], *, head: str, classes: list[str], key: str, opts: ReviewOptions
) -> dict[str, Any]:
    """One head's video-level estimate from the frames' ``key`` ("heads" or "research_only") entries, which exist on
    informative frames only: the mean over them, or abstain with aggregate_case's reason."""
    counted = np.array([bool(r["informative"]) and head in (r.get(key) or {}) for r in records], bool)
    probs = np.zeros((len(records), len(classes)))  # rows of uncounted frames are never read
    for i in np.flatnonzero(counted):
        probs[i] = [records[i][key][head]["probs"][c] for c in classes]
    agg = aggregate_case(probs, counted, min_frames=opts.min_informative_frames, min_confidence=opts.abstain_below)
    return {
        "estimate": None if agg["abstain"] else classes[agg["index"]],
        "confidence": None if agg["confidence"] is None else round(agg["confidence"], 4),
        "probs": None if agg["probs"] is None else {c: round(float(v), 4) for c, v in zip(classes, agg["probs"])},
        "frames": agg["frames"],
        "abstain": agg["abstain"],
        "reason": agg["reason"],
    }
