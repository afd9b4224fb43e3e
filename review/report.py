"""The case report: one self-contained folder (report.html, the overlay video, optionally the original video, key
frames) that opens offline and works as a review tool: a timeline drawn in the page that seeks the video by click or
drag and follows it with a playhead; key frames and a table of lesion segments whose times seek too; a slider that
fades the overlay to show the frame beneath; frame steps. Printed ("Print to PDF"), it becomes a clean page for the
patient file: controls and video hidden, tables and key frames kept whole.

The page is rendered from ``review/templates/report.html`` by Jinja2 with autoescaping on, so every value that
reaches it (file names, labels, error messages, card fields) is escaped in one place; file names inside URLs are
also percent-encoded. A report travels between people: nothing in an input's name may run as script in it. The
page's one inline script (no library, no network) therefore takes its data from ``data-*`` attributes, never from
values pasted into script text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from core.files import atomic_write, write_image_atomic
from models import gate
from models.card import ModelCard
from review.overlay import timecode
from review.pages import page_template
from review.summary import head_caption
from review.timeline import timeline

DEFAULT_USE = (
    "Research use only. Not a medical device; estimates must not drive clinical decisions. "
    "Lesion outlines are from a polyp-segmentation model trained on public colonoscopy data."
)


CLINICAL_TARGETS = ("fibrosis", "lift")  # always listed, so a reader sees when no validated model exists
RESEARCH_BANNER = (
    "Research-only estimates of heads not validated for clinical use are in predictions.jsonl/summary.json under "
    "research_only; they are not shown here."
)


def table_heads(card: ModelCard) -> list[str]:
    """The heads the estimates table lists: fibrosis and lift always, then the card's other heads."""
    return list(CLINICAL_TARGETS) + [h for h in card.heads if h not in CLINICAL_TARGETS]


def why_not_shown(card: ModelCard, head: str) -> str:
    """Why a head's estimates are not shown: the display gate's own reasons, so that a stricter rule explains itself
    here unchanged ("not available: ..." for a head the model lacks)."""
    return ("not shown: " if head in card.heads else "") + "; ".join(
        gate.refusals(card, head) or ["refused by the display gate"]
    )


def head_row(head: str, est: dict[str, Any] | None, card: ModelCard) -> dict[str, Any]:
    """One table row: the estimate of a head the display gate passes (worded as the overlay words a frame's),
    'insufficient evidence', or why nothing is shown, never a refused head's value."""
    if not gate.shown(card, head):
        return {"head": head, "state": "hidden", "why": why_not_shown(card, head)}
    info = card.heads[head]
    auc = (info.validation or {}).get("frame", {}).get("auroc")
    validation = (
        f"validation AUROC {auc:.2f}" if auc is not None else "validated"
    ) + f" ({info.n_val_labels} labelled frames)"
    if est is None or est.get("abstain"):
        return {
            "head": head,
            "state": "abstain",
            "reason": (est or {}).get("reason") or "no frames",
            "validation": validation,
        }
    return {
        "head": head,
        "state": "shown",
        "caption": head_caption(head=head, estimate=str(est["estimate"]), confidence=est["confidence"]),
        "frames": est["frames"],
        "validation": validation,
    }


def segment_row(seg: Mapping[str, Any], pos: Mapping[int, int]) -> dict[str, Any]:
    """One row of the segments table: time codes as burned into the overlay, frame positions in the video to seek."""
    peak = seg["peak"]
    return {
        "start": timecode(seg["start"]),
        "start_pos": pos[seg["start_frame"]],
        "end": timecode(seg["end"]),
        "end_pos": pos[seg["end_frame"]],
        "duration": seg["duration"],
        "frames": seg["frames"],
        "lesion_frames": seg["lesion_frames"],
        "peak": timecode(peak["time"]),
        "peak_pos": pos[peak["frame"]],
        "peak_px": peak["area_px"],
        "peak_percent": 100 * peak["area_fraction"],
        "mean_probability": seg["mean_probability"],
        "max_probability": seg["max_probability"],
    }


def write_report(
    out_dir: Path,
    *,
    stem: str,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    card: ModelCard,
    key_frames: Sequence[tuple[float, int, np.ndarray]],
    overlay: str | None,
    original: str | None,
    deid_banner: str | None = None,
) -> Path:
    """records: the video's summary rows in order (the overlay's k-th frame is records[k]); summary: as written
    to summary.json (its ``segments``, ``video.fps``, ``threshold``); overlay / original: the videos' file names
    in ``out_dir``, None where not written."""
    fps = float(summary["video"]["fps"])
    pos = {r["index"]: k for k, r in enumerate(records)}  # frame index -> position in the videos
    frames = []
    for score, index, image in key_frames:
        name = f"{stem}_{index:06d}.jpg"
        write_image_atomic(out_dir / "keyframes" / name, image)
        frames.append(
            {
                "url": "keyframes/" + quote(name),
                "index": index,
                "pos": pos[index],
                "timecode": timecode(records[pos[index]]["time"]),
                "score": score,
            }
        )
    largest = summary.get("largest_lesion")
    page = page_template("report.html").render(
        **page_context(stem=stem, summary=summary, card=card, deid_banner=deid_banner),
        overlay_url=quote(overlay) if overlay else None,
        original_url=quote(original) if original else None,
        fps=fps,
        n_frames=len(records),
        t0=records[0]["time"],
        start=timecode(records[0]["time"]),
        timeline=timeline(records, card, fps=fps, threshold=summary["threshold"], segments=summary["segments"]),
        segments=[segment_row(s, pos) for s in summary["segments"]],
        gap_s=summary["segment_gap_s"],
        largest=dict(largest, timecode=timecode(largest["time"])) if largest else None,
        head_rows=[head_row(h, summary["heads"].get(h), card) for h in table_heads(card)],
        frames_lost=summary.get("frames_lost", 0),
        key_frames=frames,
    )
    return write_page(out_dir, page)


def gallery_head_row(head: str, card: ModelCard) -> dict[str, Any]:
    """One row of the gallery's heads table: where a shown head's estimates are, or why none is shown."""
    if not gate.shown(card, head):
        return {"head": head, "text": why_not_shown(card, head), "note": True}
    return {"head": head, "text": "shown under each informative image", "note": False}


def write_gallery(
    out_dir: Path,
    *,
    stem: str,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    card: ModelCard,
    overlays: bool,
    deid_banner: str | None = None,
) -> Path:
    """report.html for still images (an image or a folder of them): each image's overlay picture beside its lesions,
    quality and the estimates of the heads the display gate passes; the summary, the heads table and the model, as
    in a video's report. records: summary rows in input order; overlays: whether overlays/<name>.jpg were written."""
    stills = []
    for r in records:
        q = r.get("quality") or {}
        stills.append(
            {
                "name": r["name"],
                "url": ("overlays/" + quote(f"{r['name']}.jpg")) if overlays else None,
                "n_lesions": r["n_lesions"],
                "lesion_probability": r["lesion_probability"],
                "lesion_px": r["lesion_px"],
                "largest_px": r["largest_px"],
                "percent": 100 * r["area_fraction"],
                "sharpness": q.get("sharpness", 0.0),
                "blurry": q.get("blurry", False),
                "overexposed": q.get("overexposed", False),
                "informative": r["informative"],
                "captions": [
                    head_caption(head=h, estimate=str(e["estimate"]), confidence=e["confidence"])
                    for h, e in (r.get("heads") or {}).items()
                    if gate.shown(card, h)
                ],
            }
        )
    page = page_template("gallery.html").render(
        **page_context(stem=stem, summary=summary, card=card, deid_banner=deid_banner),
        largest=summary.get("largest_lesion"),
        head_rows=[gallery_head_row(h, card) for h in table_heads(card)],
        pictures=overlays,
        stills=stills,
    )
    return write_page(out_dir, page)


def page_context(*, stem: str, summary: dict[str, Any], card: ModelCard, deid_banner: str | None) -> dict[str, Any]:
    """What the video report and the gallery both show: the input, the intended use, the banners, the summary, its
    errors and the model."""
    return {
        "stem": stem,
        "intended_use": card.intended_use or DEFAULT_USE,
        "deid_banner": deid_banner,
        # only that refused heads' estimates were written elsewhere (review.research_heads), never the values
        "research_banner": RESEARCH_BANNER if summary.get("research_only") else None,
        "summary": summary,
        "errors": [x["error"] for x in summary.get("errors", [])],
        "model_name": str(card.name),
        "model_date": str(card.date),
        "model_commit": str(card.git_commit)[:12],
    }


def write_page(out_dir: Path, page: str) -> Path:
    """``out_dir/report.html``, in UTF-8 as the page declares, whatever the locale."""
    path = out_dir / "report.html"
    with atomic_write(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
