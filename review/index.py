"""The case index of an archive of reviews: one row per case folder that infer.py wrote under OUT_ROOT.

python -m review.index OUT_ROOT [--watch SECONDS]

writes ``OUT_ROOT/index.html`` (a page that opens offline: a sortable, filterable table of the cases with the date
of review, duration, lesion segments, largest lesion, reliability, the estimates of the heads the display gate
passed, a thumbnail and a link to each report) and ``OUT_ROOT/cases_summary.csv`` (the same, one row per case,
for statistics). A case is a subfolder ``OUT_ROOT/<case id>/``: ``done`` when its summary.json is there, ``running``
while an infer.py run holds the folder's lock, ``incomplete`` when a run left files but no summary (failed or
killed), ``unreadable`` when its summary.json is not a JSON object.

The build is incremental: ``OUT_ROOT/.index/cache.json`` keeps each finished case's row under the size and time of
its summary.json, so a rebuild reads only the cases that finished (or were rerun) since the last one, and makes
their thumbnails (``.index/thumbs/``, 160 px wide). Builds are serialised by a lock (``.index/lock``), so jobs that
finish together may each call ``build_index`` and the last one's page lists them all. ``--watch N`` rebuilds every
N seconds until interrupted.

Every value that reaches the page is escaped (Jinja2 autoescaping) and percent-encoded inside URLs; case names are
untrusted. Text cells of the CSV that a spreadsheet would run as a formula (starting with = + - @) are prefixed
with a quote. Nothing about a case is printed: the command reports counts only.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.errors import UserError
from core.files import atomic_write, exclusive_lock, write_image_atomic
from data.io import read_image
from review.options import ReviewOptions

STATE = ".index"  # under OUT_ROOT: cache.json, thumbs/, lock
CACHE_VERSION = 1
THUMB_WIDTH = 160
MIN_INFORMATIVE = ReviewOptions().min_informative_frames  # below this a video's estimates abstain
CLINICAL_HEADS = ("fibrosis", "lift")  # listed first, like the report's estimates table
# what infer.py leaves in a folder it writes into: a subfolder with none of these is not a case (logs/, notes/)
MARKERS = (
    "summary.json",
    "predictions.jsonl",
    "config.yaml",
    "errors.jsonl",
    ".endolift.lock",
    ".endolift-outputs.json",
    ".endolift-outputs.journal",
)
STATUSES = ("done", "running", "incomplete", "unreadable")
RELIABILITY = ("good", "low", "no lesion view", "n/a")


def safe_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would evaluate (=, +, -, @, tab, CR first), prefixed with a quote; anything else
    unchanged. Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _num(value: Any) -> float | None:
    """A finite number from a JSON value, else None (a hand-made or damaged summary may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    v = _num(value)
    return None if v is None else int(v)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_case_folder(folder: Path) -> bool:
    """A visible subfolder that an infer.py run wrote into (any of MARKERS)."""
    return folder.is_dir() and not folder.name.startswith(".") and any((folder / m).exists() for m in MARKERS)


def case_folders(root: Path) -> list[Path]:
    """The case folders of OUT_ROOT, by name. Names that are not valid UTF-8 are left out (no page can show them)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"folder not found: {root} (give the out_dir that infer.py wrote the cases into)")
    if (root / "summary.json").is_file():
        raise UserError(
            f"{root} holds one case's outputs (summary.json): give the folder above it, whose subfolders are cases"
        )
    out = []
    for p in sorted(root.iterdir(), key=lambda q: q.name):
        try:
            p.name.encode("utf-8")
        except UnicodeEncodeError:
            continue
        if is_case_folder(p):
            out.append(p)
    return out


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def reliability(*, frames: int | None, informative: int | None, errors: int) -> tuple[str, str]:
    """How far a case's estimates can be trusted, from what the pipeline measured: ``no lesion view`` (no informative
    frame: no lesion in view that is neither blurry nor over-exposed), ``low`` (fewer informative frames than a
    video estimate needs, or frames that could not be read), ``good`` otherwise; and the reason in words."""
    if frames is None or informative is None:
        return "n/a", "frame counts missing from summary.json"
    if informative <= 0:
        return "no lesion view", f"0 of {frames} frames informative (lesion in view, sharp, not over-exposed)"
    why = f"{informative} of {frames} frames informative"
    if errors:
        return "low", f"{why}; {errors} read error(s)"
    if informative < MIN_INFORMATIVE:
        return "low", f"{why} (estimates need {MIN_INFORMATIVE})"
    return "good", why


def _first_error(folder: Path) -> str:
    """The first message of a case's errors.jsonl (why a run failed), or ''."""
    try:
        for line in (folder / "errors.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return str(_dict(json.loads(line)).get("error", ""))[:300]
    except (OSError, json.JSONDecodeError):
        pass
    return ""


def _thumb_source(folder: Path, summary: dict[str, Any]) -> str:
    """The picture a case's thumbnail is made from (relative to the case folder): the key frame nearest the largest
    lesion (video), else the largest lesion's overlay (images), else the first of either; '' when none."""
    largest = str(_dict(summary.get("largest_lesion")).get("name") or "")
    keyframes = sorted((folder / "keyframes").glob("*.jpg")) if (folder / "keyframes").is_dir() else []
    if keyframes:
        target = largest.rsplit("_", 1)[-1]
        if target.isdigit():

            def distance(p: Path) -> int:
                tail = p.stem.rsplit("_", 1)[-1]
                return abs(int(tail) - int(target)) if tail.isdigit() else 1 << 30

            return "keyframes/" + min(keyframes, key=distance).name
        return "keyframes/" + keyframes[0].name
    overlays = folder / "overlays"
    if overlays.is_dir():
        if largest and (overlays / f"{largest}.jpg").is_file():
            return f"overlays/{largest}.jpg"
        first = sorted(overlays.glob("*.jpg"))
        if first:
            return "overlays/" + first[0].name
    return ""


def read_case(folder: Path) -> dict[str, Any]:
    """One case's row: status, and for a finished case what its summary.json says (missing fields stay None)."""
    folder = Path(folder)
    row: dict[str, Any] = {"case": folder.name, "status": "", "detail": "", "heads": {}}
    summary_path = folder / "summary.json"
    if (folder / ".endolift.lock").exists():
        since = _stamp(folder / ".endolift.lock")
        started = datetime.fromtimestamp(since[0] / 1e9).astimezone().strftime("%Y-%m-%d %H:%M") if since else "?"
        return row | {"status": "running", "detail": f"an infer.py run holds this folder since {started}"}
    if not summary_path.is_file():
        err = _first_error(folder)
        return row | {"status": "incomplete", "detail": err or "no summary.json: the run failed or was interrupted"}
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return row | {"status": "unreadable", "detail": f"summary.json is not valid JSON ({type(e).__name__})"}
    if not isinstance(summary, dict):
        return row | {"status": "unreadable", "detail": "summary.json is not a JSON object"}
    video = _dict(summary.get("video"))
    frames, informative = _int(summary.get("frames")), _int(summary.get("informative_frames"))
    errors = summary.get("errors") if isinstance(summary.get("errors"), list) else []
    label, why = reliability(frames=frames, informative=informative, errors=len(errors))
    segments = summary.get("segments") if isinstance(summary.get("segments"), list) else None
    largest = _dict(summary.get("largest_lesion"))
    model = _dict(summary.get("model"))
    heads = {}
    for h, est in _dict(summary.get("heads")).items():
        est = _dict(est)
        heads[str(h)] = {
            "estimate": None if est.get("estimate") is None else str(est["estimate"]),
            "confidence": _num(est.get("confidence")),
            "reason": str(est.get("reason") or ""),
        }
    stamp = _stamp(summary_path)
    return row | {
        "status": "done",
        "detail": "; ".join(str(_dict(e).get("error", "")) for e in errors[:3])[:300],
        "reviewed": datetime.fromtimestamp(stamp[0] / 1e9).astimezone().isoformat(timespec="seconds"),
        "kind": "video" if video else "images",
        "duration_s": _num(video.get("duration")),
        "fps": _num(video.get("fps")),
        "frames": frames,
        "frames_with_lesion": _int(summary.get("frames_with_lesion")),
        "informative_frames": informative,
        "informative_fraction": None if not frames or informative is None else round(informative / frames, 4),
        "reliability": label,
        "reliability_note": why,
        "segments": None if segments is None else len(segments),
        "lesion_time_s": None
        if segments is None
        else round(sum(_num(_dict(s).get("duration")) or 0.0 for s in segments), 3),
        "largest_px": _int(largest.get("area_px")),
        "largest_time_s": _num(largest.get("time")),
        "max_lesion_probability": _num(summary.get("max_lesion_probability")),
        "errors": len(errors),
        "model": str(model.get("name") or ""),
        "model_date": str(model.get("date") or ""),
        "model_commit": str(model.get("git_commit") or "")[:12],
        "heads": heads,
        "report": (folder / "report.html").is_file(),
        "picture": _thumb_source(folder, summary),
        "stamp": stamp,
    }


def head_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every head with an estimate in some case: fibrosis and lift first, then the others by name."""
    seen = {h for r in rows for h in r.get("heads", {})}
    return [h for h in CLINICAL_HEADS if h in seen] + sorted(seen - set(CLINICAL_HEADS))


def thumb_name(case: str) -> str:
    """A thumbnail's file name: a digest of the case id (the id itself never becomes a second file name)."""
    return hashlib.sha256(case.encode("utf-8")).hexdigest()[:20] + ".jpg"


def make_thumbnail(root: Path, row: dict[str, Any]) -> Path | None:
    """``.index/thumbs/<digest>.jpg``, 160 px wide, from the row's picture; made when missing or older than the
    picture. None when the case has no picture or it cannot be read."""
    if not row.get("picture"):
        return None
    src = Path(root) / row["case"] / row["picture"]
    dst = Path(root) / STATE / "thumbs" / thumb_name(row["case"])
    try:
        if dst.is_file() and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            return dst
        import cv2

        image = read_image(src)
        h, w = image.shape[:2]
        small = cv2.resize(image, (THUMB_WIDTH, max(1, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
        write_image_atomic(dst, small)
    except (UserError, OSError):
        return None
    return dst


def collect(root: Path, cache: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Rows of every case folder under ``root``; a finished case whose summary.json has the size and time kept in
    ``cache`` reuses its row. Returns (rows, the new cache, how many summaries were read)."""
    cache = cache if isinstance(cache, dict) and cache.get("version") == CACHE_VERSION else {}
    old = _dict(cache.get("cases"))
    rows, kept, read = [], {}, 0
    for folder in case_folders(root):
        prev = _dict(old.get(folder.name))
        stamp = _stamp(folder / "summary.json")
        if stamp is not None and prev.get("stamp") == stamp and not (folder / ".endolift.lock").exists():
            row = prev
        else:
            row = read_case(folder)
            read += row["status"] == "done"
        rows.append(row)
        if row["status"] == "done":
            kept[folder.name] = row
    return rows, {"version": CACHE_VERSION, "cases": kept}, read


# --- presentation: shared by the offline page and the review app ----------------------------------------------------


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


def present(row: dict[str, Any], heads: Sequence[str]) -> dict[str, Any]:
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


def template(name: str):
    """A page template from review/templates, autoescaped (every value that reaches the page is escaped)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["utc"] = lambda iso: f"{str(iso)[:16].replace('T', ' ')} UTC" if iso else ""
    return env.get_template(name)


def render_index(rows: Sequence[dict[str, Any]], *, title: str, app: dict[str, Any] | None = None) -> str:
    """The case table page. Offline (``app`` None): links to each case's report.html and thumbnail by relative URL.
    In the review app, ``app`` holds its extra columns and links (review/serve.py)."""
    heads = [] if app and app.get("blind") else head_names(rows)
    shown = [present(r, heads) for r in rows]
    counts = Counter(r["status"] for r in rows)
    return template("index.html").render(
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


def _build_lock(root: Path):
    return exclusive_lock(Path(root) / STATE)


@dataclass
class IndexResult:
    page: Path
    table: Path
    counts: dict[str, int]
    read: int  # summaries read this time (the others came from the cache)


def build_index(root: str | Path, *, thumbnails: bool = True) -> IndexResult:
    """Write ``root/index.html`` and ``root/cases_summary.csv`` from the case folders under ``root``, reading only
    the cases new or changed since the last build. Safe to call from several processes at once."""
    root = Path(root)
    case_folders(root)  # a clear error before anything is created
    with _build_lock(root):
        cache_path = root / STATE / "cache.json"
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cache = None
        rows, cache, read = collect(root, cache)
        for r in rows:
            thumb = make_thumbnail(root, r) if thumbnails and r["status"] == "done" else None
            r["thumb_url"] = f"{STATE}/thumbs/{thumb.name}" if thumb else ""
            r["url"] = f"{quote(r['case'], safe='')}/" + ("report.html" if r.get("report") else "")
        page = root / "index.html"
        with atomic_write(page) as tmp:
            tmp.write_text(render_index(rows, title=f"endolift cases: {root.resolve().name}"), encoding="utf-8")
        table = root / "cases_summary.csv"
        with atomic_write(table) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            lines = csv_rows(rows)
            fields = list(lines[0]) if lines else [*CSV_COLUMNS, "report"]
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(lines)
        with atomic_write(cache_path) as tmp:
            tmp.write_text(json.dumps(cache), encoding="utf-8")
    return IndexResult(page, table, dict(Counter(r["status"] for r in rows)), read)


def _describe(result: IndexResult) -> str:
    n = sum(result.counts.values())
    parts = ", ".join(f"{result.counts[s]} {s}" for s in STATUSES if result.counts.get(s))
    return f"{n} cases ({parts or 'none'}; {result.read} read) -> {result.page}, {result.table}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="OUT_ROOT: the folder whose subfolders are infer.py's case folders")
    ap.add_argument("--watch", type=float, default=None, metavar="SECONDS", help="rebuild every SECONDS until ^C")
    ap.add_argument("--no-thumbnails", action="store_true", help="leave the thumbnails out (faster on slow disks)")
    a = ap.parse_args(argv)
    if a.watch is not None and not a.watch > 0:
        print("error: --watch needs a number of seconds > 0", file=sys.stderr)
        return 2
    try:
        result = build_index(a.root, thumbnails=not a.no_thumbnails)
        print(_describe(result))
        while a.watch:
            time.sleep(a.watch)
            before = result.counts
            result = build_index(a.root, thumbnails=not a.no_thumbnails)
            if result.read or result.counts != before:
                print(_describe(result), flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only archive, a full disk
        print(f"error: cannot write the index into {a.root} ({e.strerror}): check its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
