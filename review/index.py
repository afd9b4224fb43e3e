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

Here: the build (cache, thumbnails, lock) and the command; each case's row is read in review/case_rows.py, the page
and the CSV's rows are made in review/index_page.py.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.errors import UserError
from core.files import atomic_write, exclusive_lock, write_image_atomic
from data.io import read_image
from review.case_rows import STATUSES, case_folders, collect_rows
from review.index_page import CSV_COLUMNS, csv_rows, render_index

STATE = ".index"  # under OUT_ROOT: cache.json, thumbs/, lock
THUMB_WIDTH = 160


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


def index_lock(root: Path):
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
    with index_lock(root):
        cache_path = root / STATE / "cache.json"
        try:
            cache = json.loads(cache_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            cache = None
        rows, cache, read = collect_rows(root, cache)
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


def index_line(result: IndexResult) -> str:
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
        print(index_line(result))
        while a.watch:
            time.sleep(a.watch)
            before = result.counts
            result = build_index(a.root, thumbnails=not a.no_thumbnails)
            if result.read or result.counts != before:
                print(index_line(result), flush=True)
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
