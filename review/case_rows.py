"""What each case folder of an archive says, as one row of the case index (review/index.py) and the review app: its
status (``done``, ``running``, ``incomplete``, ``unreadable``) and, when done, the facts of its summary.json, read
defensively (a hand-made or damaged summary may hold anything). A finished case's row is cached under the size and
time of its summary.json, so that a rebuild reads only what changed."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from core.errors import UserError
from review.options import ReviewOptions

CACHE_VERSION = 1
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


def finite_number(value: Any) -> float | None:
    """A finite number from a JSON value, else None (a hand-made or damaged summary may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def finite_int(value: Any) -> int | None:
    v = finite_number(value)
    return None if v is None else int(v)


def mapping_or_empty(value: Any) -> dict[str, Any]:
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


def file_stamp(path: Path) -> list[int] | None:
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


def first_error(folder: Path) -> str:
    """The first message of a case's errors.jsonl (why a run failed), or ''."""
    try:
        for line in (folder / "errors.jsonl").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return str(mapping_or_empty(json.loads(line)).get("error", ""))[:300]
    except (OSError, json.JSONDecodeError):
        pass
    return ""


def thumbnail_source(folder: Path, summary: dict[str, Any]) -> str:
    """The picture a case's thumbnail is made from (relative to the case folder): the key frame nearest the largest
    lesion (video), else the largest lesion's overlay (images), else the first of either; '' when none."""
    largest = str(mapping_or_empty(summary.get("largest_lesion")).get("name") or "")
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
        since = file_stamp(folder / ".endolift.lock")
        started = datetime.fromtimestamp(since[0] / 1e9).astimezone().strftime("%Y-%m-%d %H:%M") if since else "?"
        return row | {"status": "running", "detail": f"an infer.py run holds this folder since {started}"}
    if not summary_path.is_file():
        err = first_error(folder)
        return row | {"status": "incomplete", "detail": err or "no summary.json: the run failed or was interrupted"}
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return row | {"status": "unreadable", "detail": f"summary.json is not valid JSON ({type(e).__name__})"}
    if not isinstance(summary, dict):
        return row | {"status": "unreadable", "detail": "summary.json is not a JSON object"}
    video = mapping_or_empty(summary.get("video"))
    frames, informative = finite_int(summary.get("frames")), finite_int(summary.get("informative_frames"))
    errors = summary.get("errors") if isinstance(summary.get("errors"), list) else []
    label, why = reliability(frames=frames, informative=informative, errors=len(errors))
    segments = summary.get("segments") if isinstance(summary.get("segments"), list) else None
    largest = mapping_or_empty(summary.get("largest_lesion"))
    model = mapping_or_empty(summary.get("model"))
    heads = {}
    for h, est in mapping_or_empty(summary.get("heads")).items():
        est = mapping_or_empty(est)
        heads[str(h)] = {
            "estimate": None if est.get("estimate") is None else str(est["estimate"]),
            "confidence": finite_number(est.get("confidence")),
            "reason": str(est.get("reason") or ""),
        }
    stamp = file_stamp(summary_path)
    return row | {
        "status": "done",
        "detail": "; ".join(str(mapping_or_empty(e).get("error", "")) for e in errors[:3])[:300],
        "reviewed": datetime.fromtimestamp(stamp[0] / 1e9).astimezone().isoformat(timespec="seconds"),
        "kind": "video" if video else "images",
        "duration_s": finite_number(video.get("duration")),
        "fps": finite_number(video.get("fps")),
        "frames": frames,
        "frames_with_lesion": finite_int(summary.get("frames_with_lesion")),
        "informative_frames": informative,
        "informative_fraction": None if not frames or informative is None else round(informative / frames, 4),
        "reliability": label,
        "reliability_note": why,
        "segments": None if segments is None else len(segments),
        "lesion_time_s": None
        if segments is None
        else round(sum(finite_number(mapping_or_empty(s).get("duration")) or 0.0 for s in segments), 3),
        "largest_px": finite_int(largest.get("area_px")),
        "largest_time_s": finite_number(largest.get("time")),
        "max_lesion_probability": finite_number(summary.get("max_lesion_probability")),
        "errors": len(errors),
        "model": str(model.get("name") or ""),
        "model_date": str(model.get("date") or ""),
        "model_commit": str(model.get("git_commit") or "")[:12],
        "heads": heads,
        "report": (folder / "report.html").is_file(),
        "picture": thumbnail_source(folder, summary),
        "stamp": stamp,
    }


def head_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every head with an estimate in some case: fibrosis and lift first, then the others by name."""
    seen = {h for r in rows for h in r.get("heads", {})}
    return [h for h in CLINICAL_HEADS if h in seen] + sorted(seen - set(CLINICAL_HEADS))


def collect_rows(root: Path, cache: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Rows of every case folder under ``root``; a finished case whose summary.json has the size and time kept in
    ``cache`` reuses its row. Returns (rows, the new cache, how many summaries were read)."""
    cache = cache if isinstance(cache, dict) and cache.get("version") == CACHE_VERSION else {}
    old = mapping_or_empty(cache.get("cases"))
    rows, kept, read = [], {}, 0
    for folder in case_folders(root):
        prev = mapping_or_empty(old.get(folder.name))
        stamp = file_stamp(folder / "summary.json")
        if stamp is not None and prev.get("stamp") == stamp and not (folder / ".endolift.lock").exists():
            row = prev
        else:
            row = read_case(folder)
            read += row["status"] == "done"
        rows.append(row)
        if row["status"] == "done":
            kept[folder.name] = row
    return rows, {"version": CACHE_VERSION, "cases": kept}, read
