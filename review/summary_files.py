"""What a finished input leaves besides its frames: summary.json, errors.jsonl, and the report (a video's page, or
the gallery of still images), written once every frame is done."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import atomic_write, write_jsonl
from models.card import ModelCard
from review.options import ReviewOptions
from review.report import write_gallery, write_report
from review.summary import deid_banner, summarise


def write_summary_and_report(
    out_dir: Path,
    *,
    stem: str,
    records: list[dict],
    card: ModelCard,
    video: dict | None,
    errors: list[dict],
    opts: ReviewOptions,
    key_frames: list,
    run: dict[str, Any] | None = None,
    deid: dict[str, Any] | None = None,
    scrub: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """summary.json, errors.jsonl and the report; returns the summary. ``deid``: data.deid.Redactor.summary() when
    the frames were de-identified; text still found after redaction is an error (exit code 2) with
    review.deid_check=fail, and a banner in the report either way. ``run``: how the predictor ran
    (Predictor.run_settings: profile, input size, TTA, reliability), in summary.json and the report. ``scrub``:
    removes the input's names from messages (review.anonymise_names)."""
    for e in errors:
        if scrub is not None:
            e.update({k: scrub(str(e[k])) for k in ("file", "error") if k in e})
    banner = deid_banner(deid)
    if banner and opts.deid_check == "fail":
        errors.append({"file": stem, "error": f"{stem}: {banner}", "deidentification": "failed"})
    summary = summarise(records, card, video, errors, threshold=opts.threshold, opts=opts, run=run)
    summary["deidentification"] = deid
    summary["names"] = "pseudonymised" if opts.anonymise_names else "input"
    with atomic_write(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    if errors:
        write_jsonl(out_dir / "errors.jsonl", errors)
    if not (opts.report and records):
        return summary
    page = {"stem": stem, "records": records, "summary": summary, "card": card, "deid_banner": banner}
    if video:
        write_report(
            out_dir,
            **page,
            key_frames=key_frames,
            overlay=f"{stem}_overlay.mp4" if opts.overlay else None,
            original=f"{stem}_original.mp4" if opts.original_video else None,
        )
    else:  # still images: a gallery
        write_gallery(out_dir, **page, overlays=opts.overlay)
    return summary
