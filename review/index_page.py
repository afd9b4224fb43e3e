"""The case index as a page and a table, shared by the offline page (review/index.py) and the review app: each row's
cells as text with their sort keys, the page rendered from ``templates/index.html`` (autoescaped: case names are
untrusted), and cases_summary.csv's rows, whose text cells a spreadsheet would run as a formula are quoted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

from review.case_rows import STATUSES, head_names
from review.pages import page_template

RELIABILITY = ("good", "low", "no lesion view", "n/a")


def safe_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would evaluate (=, +, -, @, tab, CR first), prefixed with a quote; anything else
    unchanged. Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def clock(seconds: float | None) -> str:
    """1:02:03 / 4:05 for a duration in seconds; '' when unknown."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def head_cell(est: dict[str, Any] | None) -> dict[str, Any]:
    """What the table shows of one head for one case, with its sort key and tooltip."""
    if est is None:
        return {
            "text": "",
            "title": "no estimate written (the display gate refused this head, or no model had it)",
            "sort": "",
        }
    if est.get("estimate") is None:
        return {"text": "insufficient evidence", "title": est.get("reason") or "abstained", "sort": ""}
    conf = est.get("confidence")
    text = est["estimate"] + ("" if conf is None else f" ({conf:.2f})")
    return {"text": text, "title": "estimate (confidence)", "sort": est["estimate"]}


def row_cells(row: dict[str, Any], heads: Sequence[str]) -> dict[str, Any]:
    """The row's cells as text (the numbers' sort keys beside them)."""
    row = (
        dict.fromkeys((*CSV_COLUMNS, "reliability_note", "lesion_time_s", "largest_time_s", "detail"))
        | {
            "url": "",
            "thumb_url": "",
            "heads": {},
        }
        | row
    )
    reviewed = row.get("reviewed") or ""
    largest = row.get("largest_px")
    return row | {
        "reviewed_text": reviewed[:16].replace("T", " "),
        "duration_text": clock(row.get("duration_s"))
        if row.get("kind") == "video"
        else (f"{row['frames']} images" if row.get("frames") is not None else ""),
        "segments_text": ""
        if row.get("segments") is None
        else f"{row['segments']} ({clock(row.get('lesion_time_s'))})",
        "largest_text": ""
        if not largest
        else f"{largest:,} px" + ("" if row.get("largest_time_s") is None else f" at {clock(row['largest_time_s'])}"),
        "prob_text": "" if row.get("max_lesion_probability") is None else f"{row['max_lesion_probability']:.2f}",
        "head_cells": [head_cell(row.get("heads", {}).get(h)) for h in heads],
        "quoted": quote(row["case"], safe=""),
    }


def render_index(rows: Sequence[dict[str, Any]], *, title: str, app: dict[str, Any] | None = None) -> str:
    """The case table page. Offline (``app`` None): links to each case's report.html and thumbnail by relative URL.
    In the review app, ``app`` holds its extra columns and links (review/serve.py)."""
    heads = [] if app and app.get("blind") else head_names(rows)
    shown = [row_cells(r, heads) for r in rows]
    counts = Counter(r["status"] for r in rows)
    return page_template("index.html").render(
        title=title,
        rows=shown,
        heads=heads,
        counts=[(s, counts.get(s, 0)) for s in STATUSES],
        reliabilities=RELIABILITY,
        generated=datetime.now().astimezone().strftime("%Y-%m-%d %H:%M"),
        app=app,
        nonce=(app or {}).get("nonce"),
    )


CSV_COLUMNS = (
    "case",
    "status",
    "reviewed",
    "kind",
    "duration_s",
    "fps",
    "frames",
    "frames_with_lesion",
    "informative_frames",
    "informative_fraction",
    "reliability",
    "segments",
    "lesion_time_s",
    "largest_px",
    "largest_time_s",
    "max_lesion_probability",
    "errors",
    "model",
    "model_date",
    "model_commit",
)


def csv_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """cases_summary.csv's rows: CSV_COLUMNS, then per head its estimate and confidence, then the report's path."""
    heads = head_names(rows)
    out = []
    for r in rows:
        line = {c: r.get(c) for c in CSV_COLUMNS}
        for h in heads:
            est = r.get("heads", {}).get(h) or {}
            line[h] = est.get("estimate") or ("insufficient evidence" if est else None)
            line[f"{h}_confidence"] = est.get("confidence")
        line["report"] = f"{r['case']}/report.html" if r.get("report") else None
        out.append({k: "" if v is None else safe_cell(v) for k, v in line.items()})
    return out
